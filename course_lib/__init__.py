"""course_lib: the one real implementation behind the stage-4 LLM engineering course.

Every notebook imports from here; exercises in ``exercises/`` are learner-sized versions of
single functions that live here in full.
"""

__version__ = "0.1.0"
