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


# --------------------------------------------------------------------------- xdist scheduling
# `make test` runs with pytest-xdist (`-n 2 --dist loadgroup`). A test file's tests stay on one
# worker, in order, so its module/session fixtures (a trained model, a grader's reference run)
# are built once and an nbval notebook's cells run in one kernel. A module that sets
# `XDIST_PER_TEST = True` (independent tests, each expensive) lets xdist spread its tests.
#
# The grouping is done by the scheduler below, not by xdist_group marks: with pytest 9.2 xdist's
# loadgroup silently stops grouping (it appends "@group" to the legacy `_nodeid` field, which
# pytest 9.2's structured node ids ignore: pytest-xdist issue #1386), and tests were spread one by
# one, a notebook's cells over both workers.
#
# Order: xdist hands out work units in collection order (our scheduler turns off its own
# reordering, which puts the files with the most tests first and so the few long tests last: a
# long file collected last would run alone at the end while the other worker idles). First the
# exercise graders on the solutions (under a minute in all: every file that passes here is shared
# with the lessons' check() cells and progress() in the learner-steps test, which then need not
# grade again: tests/exercises/conftest.py), then the files that took longest in a profiled run
# (seconds on one worker of the 2-core machine), longest first; everything else keeps its order.
LONGEST_FIRST = (
    "tests/exercises/",
    "tests/test_learner_workspace.py",  # 391 s (24 tests, spread over both workers)
    "tests/test_grader_strength.py",  # 306 s (21 tests, spread)
    "tests/browser/test_jupyterlab.py",  # 51 s
    "tests/reliability/test_fsdp_torchrun.py",  # 50 s
    "tests/reliability/test_ddp_torchrun.py",  # 42 s
    "tests/test_progress.py",  # 34 s
    "tests/unit/test_gpu_check.py",  # 26 s
    "tests/unit/test_protocol.py",  # 26 s
    "tests/unit/test_serve.py",  # 25 s
    "tests/test_grading_timeout.py",  # 23 s
    "tests/unit/test_trackers.py",  # 21 s
    "tests/reliability/test_kill_resume.py",  # 19 s
    "tests/browser/test_tables.py",  # 15 s
)


@pytest.hookimpl(optionalhook=True)  # xdist comes with `make install-test`; a learner's `make lab` has no xdist
def pytest_xdist_make_scheduler(config, log):
    """One work unit per file (per test in an `XDIST_PER_TEST` module), in collection order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath
    per_test: dict[str, bool] = {}

    def spread(path: str) -> bool:
        if path not in per_test:
            f = root / path
            per_test[path] = f.suffix == ".py" and f.is_file() and "\nXDIST_PER_TEST = True" in f.read_text("utf-8")
        return per_test[path]

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems made

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if spread(path) else path

    return FileScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # Runs in the workers, whose collection is what gets scheduled (xdist sets their `dist` to
    # "no" and `loadgroup` to True).
    if not getattr(config.option, "loadgroup", False):
        return

    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next(
            (i for i, p in enumerate(LONGEST_FIRST) if path == p or path.startswith(p) and p.endswith("/")),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)  # stable: the order within a file (and among the rest) is kept
