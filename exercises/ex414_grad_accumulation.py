"""练习 ex414：梯度累积 (gradient accumulation)：N 个小批次 (micro-batch) = 一个 N 倍大的批次。

在 notebook 里运行 `from course_lib.grading import check; check("4.1.4")` 检查你的实现。
完整版本见 `course_lib/train.py` 的 `Trainer.train_step`。
"""
from collections.abc import Callable

import torch
from torch import Tensor


def accumulation_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      micro_batches: list[tuple[Tensor, Tensor]],
                      loss_fn: Callable[[Tensor, Tensor], Tensor], max_norm: float = 0.0) -> float:
    """用 `micro_batches` 里的 N 个小批次做 **一次** 优化器步 (optimizer step)。

    约定 (contract)：
    - 对每个 `(x, y)`：`loss = loss_fn(model(x), y)`（loss_fn 返回该小批次的平均损失），
      再 **除以 N** 后 `backward()`：梯度在 `.grad` 里累加，N 个 `1/N` 加起来正好是大批次的平均。
    - 所有小批次做完之后：如果 `max_norm > 0`，用 `torch.nn.utils.clip_grad_norm_` 对
      **累积后的** 总梯度裁剪一次；然后 `optimizer.step()` 一次、`optimizer.zero_grad()` 一次。
    - 所有小批次大小相同时，结果应与在 `torch.cat` 起来的大批次上做一步完全等价（允许浮点误差）。
    - 返回 N 个小批次损失的平均值（Python float）。
    - 调用前 `.grad` 可以假定为空（上一步已经 zero_grad）。
    """
    raise NotImplementedError("请实现 accumulation_step")
