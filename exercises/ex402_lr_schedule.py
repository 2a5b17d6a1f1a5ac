"""练习 ex402：学习率预热 (warmup) + 余弦衰减 (cosine decay) 调度。

在 notebook 里运行 `from course_lib.grading import check; check("4.0.2")` 检查你的实现。
完整版本见 `course_lib/schedule.py`。
"""


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """返回第 `step` 个优化器步 (optimizer step，从 0 开始计数) 使用的学习率。

    约定 (contract)，与 Hugging Face `get_cosine_schedule_with_warmup` 的约定相同：
    - 预热：`step < warmup_steps` 时 lr = peak_lr * step / warmup_steps
      （所以第 0 步的 lr 是 0，这是 HF 的约定；nanoGPT 用 (step + 1) / warmup_steps）；
    - 衰减：之后 progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)，
      lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * progress))；
    - `step >= total_steps` 时返回 min_lr（不要让余弦再升回去）。
    - 返回 Python float。
    """
    raise NotImplementedError("请实现 lr_at")
