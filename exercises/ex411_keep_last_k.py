"""练习 ex411：检查点轮换 (checkpoint rotation)：只保留最近 K 个。

在 notebook 里运行 `from course_lib.grading import check; check("4.1.1")` 检查你的实现。
完整版本见 `course_lib/checkpoint.py` 的 `CheckpointManager.rotate`。
"""
from pathlib import Path


def rotate_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """删除 `ckpt_dir` 里较旧的完整检查点，只保留步数 (step) 最大的 `keep_last` 个。

    约定 (contract)：
    - 检查点是名为 `step_XXXXXXXX`（8 位或更多数字）的子文件夹；只有里面存在
      `COMPLETE.json` 标记文件的才算「完整」。
    - 按文件夹名里的 **步数数值** 排序（不是按字符串、也不是按修改时间 mtime）。
    - 只删除完整检查点里较旧的那些；没有标记的文件夹（可能正在写入）和其他文件一律不动。
    - `keep_last < 1` 时抛出 `ValueError`（至少保留一个，否则崩溃后无处恢复）。
    - 返回被删除的文件夹路径列表，按步数从小到大排列。
    """
    raise NotImplementedError("请实现 rotate_checkpoints")
