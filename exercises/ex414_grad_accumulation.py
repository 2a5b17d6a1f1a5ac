"""练习 ex414：梯度累积 (gradient accumulation)：N 个小批次 (micro-batch) = 一个 N 倍大的批次。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.4")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex414_grad_accumulation")`，每调用一次多给一层提示。
"""

from collections.abc import Callable

import torch
from torch import Tensor


def accumulation_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    max_norm: float = 0.0,
) -> float:
    """用 `micro_batches` 里的 N 个小批次 `(x, y)` 做 **一次** 优化器步 (optimizer step)。

    输入：模型、优化器（任意：SGD、AdamW…）、N 个同样大小的小批次、`loss_fn(pred, y)`（返回该批的
    平均损失）、`max_norm`（> 0 时裁剪全局梯度范数，0 表示不裁剪）。调用前 `.grad` 为空。

    约定 (contract)：
    - 参数的更新必须与「把 N 个小批次 `torch.cat` 成一个大批次、算一次平均损失、backward、
      （max_norm > 0 时）按 max_norm 裁剪、step」完全等价（只允许浮点求和顺序带来的误差）；
    - 恰好一次 `optimizer.step()`；返回时梯度已清空；
    - 返回 N 个小批次损失的平均值（Python float），等于大批次的平均损失。

    例子：N=4 个各 2 条样本的小批次 + SGD(lr=0.1) → 参数变化与 8 条样本的一个批次做一步 SGD 相同。
    """
    raise NotImplementedError("请实现 accumulation_step")
