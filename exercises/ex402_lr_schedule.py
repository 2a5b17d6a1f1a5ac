"""练习 ex402：学习率预热 (warmup) + 余弦衰减 (cosine decay) 调度。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.2")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex402_lr_schedule")`，每调用一次多给一层提示。
"""


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """返回第 `step` 个优化器步 (optimizer step，从 0 开始计数) 使用的学习率（Python float）。

    约定 (contract)，与 Hugging Face `get_cosine_schedule_with_warmup` 的约定相同：
    - 预热段 `0 <= step < warmup_steps`：从 0 线性升到 peak_lr，第 0 步的 lr 就是 0（HF 的约定；
      nanoGPT 系列的约定不同，第 0 步就大于 0）；
    - 衰减段 `warmup_steps <= step < total_steps`：半个余弦周期，从 peak_lr 平滑降向 min_lr；
    - `step >= total_steps`：一直是 min_lr（余弦不能再升回去）；
    - `warmup_steps = 0` 时没有预热段。

    例子：peak_lr=1.0, warmup_steps=4, total_steps=12, min_lr=0.1：
    step 0 → 0.0，step 2 → 0.5，step 4 → 1.0，step 8 → 0.55（余弦的一半），step 12 → 0.1，step 20 → 0.1。
    """
    raise NotImplementedError("请实现 lr_at")
