"""course_lib.lab: the course machinery, kept apart from the ML core.

grading, hints, quiz, quiz_data   exercise graders (``python -m course_lib.lab.grading``), hints, self-checks
course_map, envcheck, paths       the lesson/exercise map, the environment check, where runs and the repo live
measure, experiments              the lessons' tables and measurements (core modules never time themselves)
runner, progress_bars, threads    running a training command from a notebook, live bars, thread pinning
plotting, demo                    the lessons' plots and demo-text helpers

The core (``course_lib/*.py``) never imports this package (tests/test_imports.py).
"""
