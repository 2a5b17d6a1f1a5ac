"""Grader for exercises/ex411_keep_last_k.py; oracle: course_lib.checkpoint.CheckpointManager.rotate."""

import os
import time

import pytest

from course_lib.checkpoint import CheckpointManager

EX = "ex411_keep_last_k"


def make(root, steps, complete=True):
    for s in steps:
        d = root / f"step_{s:08d}"
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"x")
        if complete:
            (d / "COMPLETE.json").write_text("{}")


def names(root):
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize("steps, k", [([2, 10, 100], 2), ([5, 1, 3, 4, 2], 3), ([7], 1), ([1, 2], 5)])
def test_matches_checkpoint_manager(impl, tmp_path, steps, k):
    a, b = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    make(a, steps)
    make(b, steps)
    CheckpointManager(tmp_path / "a", keep_last=k).rotate()
    removed = impl(EX).rotate_checkpoints(b, k)
    assert names(b) == names(a), f"保留的检查点不对：期望 {names(a)}，实际 {names(b)}"
    want = sorted(s for s in steps)[: max(0, len(steps) - k)]
    assert [p.name for p in removed] == [f"step_{s:08d}" for s in want], (
        f"返回值应是被删除的文件夹（按步数从小到大）：期望 {want}，实际 {[p.name for p in removed]}"
    )


def test_numeric_not_string_order(impl, tmp_path):
    # 'step_100000000' < 'step_99999999' as strings, but 100000000 is the larger step
    d = tmp_path / "checkpoints"
    make(d, [99999999, 100000000, 5])
    impl(EX).rotate_checkpoints(d, 1)
    assert names(d) == ["step_100000000"], (
        f"应按步数数值保留 step_100000000（按字符串排序它反而最小），实际剩下 {names(d)}"
    )


def test_step_order_not_mtime_order(impl, tmp_path):
    d = tmp_path / "checkpoints"
    make(d, [3, 1, 2])
    now = time.time()
    for step, age in ((3, 300), (1, 100), (2, 200)):  # the newest step was touched longest ago
        os.utime(d / f"step_{step:08d}", (now - age, now - age))
    impl(EX).rotate_checkpoints(d, 2)
    assert names(d) == ["step_00000002", "step_00000003"], (
        f"应按步数保留 step 2 和 3（它们的修改时间 mtime 最旧，不能按 mtime 排序），实际剩下 {names(d)}"
    )


def test_incomplete_and_other_files_untouched(impl, tmp_path):
    d = tmp_path / "checkpoints"
    make(d, [1, 2, 3])
    make(d, [4], complete=False)  # being written right now
    (d / "notes.txt").write_text("keep me")
    impl(EX).rotate_checkpoints(d, 1)
    assert names(d) == ["notes.txt", "step_00000003", "step_00000004"], (
        f"没有 COMPLETE.json 的文件夹和其他文件不能删：剩下 {names(d)}"
    )


def test_keep_last_zero_is_an_error(impl, tmp_path):
    d = tmp_path / "checkpoints"
    make(d, [1, 2])
    with pytest.raises(ValueError):
        impl(EX).rotate_checkpoints(d, 0)
    assert names(d) == ["step_00000001", "step_00000002"], "keep_last=0 时不能删除任何东西"
