"""参考答案 ex402：warmup + cosine。"""

import math


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return peak_lr * step / warmup_steps  # HF convention: lr = 0 on step 0
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return float(min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))
