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
