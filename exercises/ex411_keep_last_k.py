"""练习 ex411：检查点轮换 (checkpoint rotation)：只保留最近 K 个。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.1")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex411_keep_last_k")`，每调用一次多给一层提示。
"""

from pathlib import Path


def rotate_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """删除 `ckpt_dir` 里较旧的完整检查点，只保留步数 (step) 最大的 `keep_last` 个。

    约定 (contract)：
    - 检查点是名为 `step_<数字>`（8 位或更多数字，如 `step_00000100`、`step_100000000`）的子文件夹；
      只有里面存在 `COMPLETE.json` 标记文件的才算「完整」；
    - 「最新」指文件夹名里的步数数值最大（不是名字的字符串顺序，也不是修改时间 mtime）；
    - 只删除完整检查点里较旧的那些；没有标记的文件夹（可能正在写入）和其他文件一律不动；
    - `keep_last < 1` 时抛出 `ValueError`，什么都不删（至少保留一个，否则崩溃后无处恢复）；
    - 返回被删除的文件夹路径列表，按步数从小到大排列。

    例子：完整的 step_00000001、step_00000002、step_00000003，正在写的 step_00000004（无标记），
    keep_last=2 → 删除并返回 [step_00000001]，剩下 2、3、4。
    """
    raise NotImplementedError("请实现 rotate_checkpoints")
