"""参考答案 ex404：NaN 守卫。"""

import math
from collections.abc import Iterable

import torch


class NonFiniteError(FloatingPointError):
    """loss 或梯度出现 NaN/Inf。"""


def guard_step(step: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> float:
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    loss_val = float(loss.detach())
    if not (math.isfinite(loss_val) and math.isfinite(norm)):
        raise NonFiniteError(
            f"non-finite value at step {step}: loss={loss_val}, grad_norm={norm}. Likely causes: "
            "learning rate too high, exploding gradients (use clipping), fp16 overflow, bad batch."
        )
    return norm
