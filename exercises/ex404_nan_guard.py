"""练习 ex404：NaN 守卫 (NaN guard)。

在 notebook 里运行 `from course_lib.grading import check; check("4.0.4")` 检查你的实现。
完整版本见 `course_lib/monitor.py` 的 `check_finite` 和 `course_lib/train.py` 的 `train_step`。
"""
from collections.abc import Iterable

import torch


class NonFiniteError(FloatingPointError):
    """loss 或梯度出现 NaN/Inf。"""


def guard_step(step: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> float:
    """在 `backward()` 之后、`optimizer.step()` 之前调用：检查这一步是否还是有限值 (finite)。

    约定 (contract)：
    - 计算所有 `p.grad is not None` 的参数梯度的全局 L2 范数 (global grad-norm)（不裁剪、不修改梯度）；
    - 如果 `loss` 或这个范数是 NaN 或 ±Inf，抛出 `NonFiniteError`，信息里必须包含
      `f"step {step}"`，以及可能的原因 (likely causes)，至少提到 "learning rate"（学习率太大）；
    - 否则返回范数（Python float），训练照常进行；
    - 不得修改参数或梯度。
    """
    raise NotImplementedError("请实现 guard_step")
