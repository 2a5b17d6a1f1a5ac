"""练习 ex403：按全局范数裁剪梯度 (gradient clipping by global norm)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.3")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex403_clip_grad_norm")`，每调用一次多给一层提示。
"""

from collections.abc import Iterable

import torch


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """把所有参数的梯度作为一个整体缩小，使全局 L2 范数 (global L2 norm) 不超过 `max_norm`。

    约定 (contract)，结果与 `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` 逐元素一致：
    - 全局范数 = 把所有梯度拼成一个长向量后的 L2 范数；`p.grad is None` 的参数跳过；
    - 范数超过 `max_norm` 时，所有梯度乘以同一个系数 max_norm / (范数 + eps)（原地修改，方向不变）；
      没超过时一个数都不改；
    - 返回裁剪 **之前** 的全局范数（0 维 float32 张量）；没有任何梯度时返回 tensor(0.)；
    - `parameters` 可能是生成器 (generator)：只能遍历一次。

    例子：两个参数的梯度是 [3., 4.] 和 [0.]，max_norm=1 → 返回 tensor(5.)，
    梯度变成约 [0.6, 0.8] 和 [0.]。
    """
    raise NotImplementedError("请实现 clip_grad_norm")
