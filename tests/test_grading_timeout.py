"""course_lib.lab.grading: an endless loop in the learner's code is stopped and reported in Chinese,
and a failure row carries the grader's whole message (expected and got), not its first line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from course_lib.lab import grading

ROOT = Path(__file__).resolve().parents[1]
EX = "ex00_rmsnorm"


def copy_course(tmp_path: Path, body: str) -> Path:
    """A minimal course tree: root conftest, grader conftest, one grader, one exercise."""
    root = tmp_path / "course"
    (root / "tests" / "exercises").mkdir(parents=True)
    (root / "exercises").mkdir()
    shutil.copy(ROOT / "conftest.py", root / "conftest.py")
    shutil.copy(ROOT / "tests" / "exercises" / "conftest.py", root / "tests" / "exercises" / "conftest.py")
    shutil.copy(ROOT / "tests" / "exercises" / f"test_{EX}.py", root / "tests" / "exercises" / f"test_{EX}.py")
    stub = (ROOT / "exercises" / f"{EX}.py").read_text()
    (root / "exercises" / f"{EX}.py").write_text(stub.replace('    raise NotImplementedError("请实现 rms_norm")', body))
    return root


@pytest.mark.parametrize("per_test_plugin", [True, False])
def test_endless_loop_is_stopped_with_a_message(tmp_path, monkeypatch, per_test_plugin):
    if per_test_plugin and not grading._pytest_timeout_available():
        pytest.skip("pytest-timeout is not installed: only the whole-run limit applies")
    monkeypatch.setattr(grading, "_pytest_timeout_available", lambda: per_test_plugin)
    monkeypatch.setattr(grading, "STARTUP_S", 8.0)  # the whole-run limit: 1 + 8 s
    root = copy_course(tmp_path, "    while True:\n        pass")
    t0 = time.monotonic()
    result = grading.run_graders([EX], root=root, timeout=1)
    elapsed = time.monotonic() - t0
    assert elapsed < 1 + 8 + 15, f"grading did not stop: {elapsed:.0f}s"
    assert result.rows and not result.passed
    assert all("你的代码运行超过 1 秒，可能有死循环" in r.message for r in result.rows), result.to_text()


def test_failure_row_shows_expected_and_got(tmp_path):
    # a wrong RMSNorm: forgets eps. The grader's message spans lines; the row keeps all of them.
    root = copy_course(
        tmp_path, "    return (x.float() / x.float().pow(2).mean(-1, keepdim=True).sqrt()).to(x.dtype) * weight"
    )
    result = grading.run_graders([EX], root=root, timeout=60)
    failed = [r for r in result.rows if r.status == grading.STATUS_FAIL]
    assert failed, result.to_text()
    assert not any(r.message.startswith(("assert ", "AssertionError")) for r in failed)
    html = result._repr_html_()
    assert "white-space:pre-wrap" in html


def test_failure_message_keeps_every_line_of_the_graders_text():
    text = (
        "AssertionError: position_ids 不对：\n期望 [[0, 0, 1], [0, 1, 2]]\n实际 [[0, 1, 2], [0, 1, 2]]\n"
        "assert False\n +  where False = ..."
    )
    msg = grading._failure_message(text)
    assert msg == "position_ids 不对：\n期望 [[0, 0, 1], [0, 1, 2]]\n实际 [[0, 1, 2], [0, 1, 2]]"


def test_bad_timeout_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("COURSE_GRADING_TIMEOUT", "soon")
    with pytest.raises(grading.GradingError, match="COURSE_GRADING_TIMEOUT"):
        grading.grading_timeout()
