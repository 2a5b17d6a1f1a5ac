"""Root conftest: the `--impl` option must be registered here (an initial conftest), so that
it exists whether pytest is started with `tests/exercises`, one grader file or no path.

Graders receive the implementation under test through the `impl` fixture defined in
tests/exercises/conftest.py.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        action="store",
        default=None,
        choices=("exercises", "solutions"),
        help="which implementation the exercise graders test: exercises (the learner's "
        "stubs) or solutions (reference answers). Default: $COURSE_IMPL, else solutions.",
    )


# --------------------------------------------------------------------------- shared oracles
# One folder per test run for the expensive results several tests share (tests/oracles.py).
# Created by the process that owns the run (not by xdist workers, which inherit it, nor by a
# pytest a test starts inside the run, which finds it already set).
def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent / "tests"
    if not (tests / "oracles.py").is_file():  # a grader-only copy of the course (tests/committed.py)
        return
    sys.path.insert(0, str(tests))
    from oracles import start_run

    config._course_oracles = start_run()


def pytest_unconfigure(config):
    path = getattr(config, "_course_oracles", None)
    if path:
        from oracles import end_run

        end_run(path)


# --------------------------------------------------------------------------- xdist grouping
# `make test` runs with pytest-xdist (`-n 2 --dist loadgroup`). A test file's tests stay on one
# worker, in order, so its module/session fixtures (a trained model, a grader's reference run)
# are built once and an nbval notebook's cells run in one kernel. A module that sets
# `XDIST_PER_TEST = True` (independent tests, each expensive) lets xdist spread its tests.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist") or getattr(config.option, "dist", "no") == "no":
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        module = getattr(item, "module", None)
        if module is not None and getattr(module, "XDIST_PER_TEST", False):
            continue
        item.add_marker(pytest.mark.xdist_group(name=item.nodeid.split("::", 1)[0]))
