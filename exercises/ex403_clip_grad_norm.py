"""练习 ex403：按全局范数裁剪梯度 (gradient clipping by global norm)。

在 notebook 里运行 `from course_lib.grading import check; check("4.0.3")` 检查你的实现。
"""
from collections.abc import Iterable

import torch


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """把所有参数的梯度作为一个整体裁剪，使全局 L2 范数 (global L2 norm) 不超过 `max_norm`。

    约定 (contract)，与 `torch.nn.utils.clip_grad_norm_` 相同：
    - 全局范数 total = sqrt(sum over params of ||p.grad||^2)；`p.grad is None` 的参数跳过
      （比如冻结的或这一步没用到的参数）；
    - clip_coef = max_norm / (total + eps)；只有 clip_coef < 1 时才把每个梯度原地 (in-place)
      乘以 clip_coef；
    - 返回裁剪**之前**的全局范数，0 维 float32 张量；没有任何梯度时返回 tensor(0.)。
    - `parameters` 可能是生成器 (generator)：只能遍历一次。
    """
    raise NotImplementedError("请实现 clip_grad_norm")
