"""Fixtures that hand the exercise graders the implementation under test.

Like the CS336 `tests/adapters.py`, graders never import the learner's code directly: they
ask for it by exercise name, and a command-line option decides whether the stub in
`exercises/` or the reference in `solutions/` is tested:

    pytest tests/exercises --impl exercises     # the learner's files
    pytest tests/exercises --impl solutions     # the reference answers (default)
    COURSE_IMPL=exercises pytest tests/exercises
    COURSE_IMPL=tests/exercises/wrong/common pytest tests/exercises   # any folder of ex*.py

A folder lets tests/test_grader_strength.py point a grader at plausible wrong answers.

Each call loads the file fresh from disk (no import cache), so an edited exercise is picked
up without restarting anything.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count()


def exercise_path(name: str, kind: str) -> Path:
    """`<ROOT>/<kind>/<name>.py`; `kind` is exercises, solutions or a folder path."""
    path = (ROOT / kind / f"{name}.py").resolve()
    if not path.is_file():
        raise FileNotFoundError(f"找不到练习文件 (exercise file) {path}")
    return path


def load_exercise_module(name: str, kind: str) -> ModuleType:
    """Load `<ROOT>/<kind>/<name>.py` as a brand-new module object."""
    path = exercise_path(name, kind)
    mod_name = f"_course_impl_{name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs so dataclasses / pickling inside the module work.
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


@pytest.fixture(scope="session")
def impl_kind(request) -> str:
    kind = request.config.getoption("--impl") or os.environ.get("COURSE_IMPL") or "solutions"
    if kind not in ("exercises", "solutions") and not (ROOT / kind).is_dir():
        raise pytest.UsageError(f"--impl / COURSE_IMPL 只能是 exercises、solutions 或一个存在的文件夹，收到 {kind!r}")
    return kind


@pytest.fixture
def impl(impl_kind):
    """Factory: `impl("ex00_rmsnorm")` returns that exercise's module, freshly loaded."""

    def _load(name: str) -> ModuleType:
        return load_exercise_module(name, impl_kind)

    return _load


@pytest.fixture(scope="session")
def impl_path(impl_kind):
    """Factory: `impl_path("ex411_train_script")` returns the file's path (for scripts the grader
    runs as a process instead of importing)."""

    def _path(name: str) -> Path:
        return exercise_path(name, impl_kind)

    return _path


# --------------------------------------------------------------------------- shared with grading
# While `make test` runs, grading results are shared per exercise and file content
# (course_lib.lab.grading's oracle cache). The lessons' check() cells and progress() in the
# learner-steps test grade the reference solutions copied into exercises/: the same grader files,
# the same file content, the same library. When every test of a grader file has just passed
# here on solutions/, that result is stored under the key grading would compute, so those
# graders are not run a second time. Only a complete, all-passed file is stored; anything else is
# graded again there.
_items: dict[str, int] = {}
_passed: dict[str, list[str]] = {}
_failed: set[str] = set()
_kind: list[str] = []


def _exercise_of(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    name = Path(path).stem
    if Path(path).parent.as_posix() != "tests/exercises" or not name.startswith("test_ex"):
        return None
    return name.removeprefix("test_")


def pytest_collection_finish(session):
    _items.clear()
    _kind[:] = [session.config.getoption("--impl") or os.environ.get("COURSE_IMPL") or "solutions"]
    for item in session.items:
        if (name := _exercise_of(item.nodeid)) is not None:
            _items[name] = _items.get(name, 0) + 1


def pytest_runtest_logreport(report):
    name = _exercise_of(report.nodeid)
    if name is None or name in _failed:
        return
    if not report.passed or (report.when == "call" and hasattr(report, "wasxfail")):
        _failed.add(name)
        return
    if report.when != "teardown":
        return
    _passed.setdefault(name, []).append(report.nodeid.split("::")[-1])
    if len(_passed[name]) == _items.get(name, -1):
        _share(name, _passed[name])


def _share(name: str, tests: list[str]) -> None:
    if _kind != ["solutions"]:
        return
    from course_lib.lab import grading

    key = grading._oracle_key(ROOT, "solutions", grading.grading_timeout(), name)
    if key is not None:
        grading._store_rows(key, name, [grading.TestRow(name, t, grading.STATUS_PASS) for t in tests])
