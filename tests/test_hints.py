"""Hints: one more level per call, every exercise has at least two, and the stubs themselves
do not point at the library code that solves them (the recipe lives in the hints)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from course_lib.lab import hints

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from committed import head_files  # noqa: E402


@pytest.fixture(autouse=True)
def fresh():
    hints.reset_hints()
    yield
    hints.reset_hints()


def test_every_exercise_has_hints():
    assert hints.exercises_without_hints() == []
    stubs = {p.stem for p in (ROOT / "exercises").glob("ex*.py")}
    assert set(hints.HINTS) <= stubs, f"hints for exercises that do not exist: {sorted(set(hints.HINTS) - stubs)}"


def test_one_level_per_call():
    levels = hints.HINTS["ex402_lr_schedule"]
    first = hints.hint("4.0.2", show=False)
    assert "1/3" in first and levels[0] in first and levels[1] not in first
    second = hints.hint("4.0.2", show=False)
    assert "2/3" in second and levels[1] in second and levels[2] not in second
    third = hints.hint("ex402_lr_schedule", show=False)
    assert levels[2] in third and "最后一层" in third
    assert "3/3" in hints.hint("4.0.2", show=False)  # stays at the last level
    again = hints.hint("4.0.2", level=1, show=False)
    assert levels[0] in again and levels[1] not in again


def test_lesson_with_two_exercises_asks_for_the_name():
    text = hints.hint("4.1.1", show=False)
    assert "ex411_keep_last_k" in text and "ex411_train_script" in text


def test_unknown_exercise_and_bad_level():
    assert "没有找到" in hints.hint("9.9.9", show=False)
    with pytest.raises(ValueError, match="level"):
        hints.hint("4.0.2", level=9, show=False)


def docstrings(path: Path) -> str:
    """The stub's docstrings as committed (tests/committed.py): the learner's solved exercise in
    their checkout is theirs, not the course's stub, and must not turn `make test` red."""
    committed = head_files("exercises")
    raw = (committed or {}).get(f"exercises/{path.name}")
    tree = ast.parse(raw.decode("utf-8") if raw is not None else path.read_text(encoding="utf-8"))
    parts = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


@pytest.mark.parametrize("stub", sorted((ROOT / "exercises").glob("ex*.py")), ids=lambda p: p.stem)
def test_stub_states_a_contract_not_a_pointer(stub):
    text = docstrings(stub)
    assert "course_lib/" not in text and "完整版本见" not in text, f"{stub.name} points at the library solution"
    assert "例子" in text, f"{stub.name}: the contract should carry one worked example (例子)"
    assert f'hint("{stub.stem}")' in text, f"{stub.name}: the module docstring should say how to ask for a hint"
