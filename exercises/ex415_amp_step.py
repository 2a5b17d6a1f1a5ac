"""练习 ex415：混合精度 (mixed precision) 训练步：autocast + GradScaler。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.5")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex415_amp_step")`，每调用一次多给一层提示。
"""

from collections.abc import Callable

import torch
from torch import Tensor


def amp_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    max_norm: float,
    device_type: str = "cpu",
    dtype: torch.dtype = torch.float16,
) -> dict:
    """用自动混合精度 (autocast, `dtype`) 和传入的梯度缩放器 `scaler` 做一次训练步。

    约定 (contract)：
    - 前向在 `torch.autocast(device_type=device_type, dtype=dtype)` 里算；反向用 `scaler` 把 loss
      放大后再算（fp16 的小梯度才不会下溢 (underflow) 成 0）；
    - 按 `max_norm` 裁剪的是 **真实大小** 的梯度（不是放大后的），之后由 `scaler` 决定是否更新：
      梯度里有 inf/NaN 时跳过这一步并把 scale 调小；
    - 返回时梯度已清空；
    - 返回 dict：`{"loss": float, "grad_norm": float（裁剪前的真实全局范数）,
      "skipped": bool（这一步是否被跳过）}`。

    例子：正常的一步 → `{"loss": 0.93, "grad_norm": 1.7, "skipped": False}`，参数更新与 fp32 下
    先裁剪到 max_norm 再 step 的结果接近；如果某个梯度是 inf → `skipped=True`，参数不变。
    """
    raise NotImplementedError("请实现 amp_train_step")
