"""练习 ex415：混合精度 (mixed precision) 训练步：autocast + GradScaler。

在 notebook 里运行 `from course_lib.grading import check; check("4.1.5")` 检查你的实现。
完整版本见 `course_lib/train.py` 的 `Trainer.train_step`。
"""
from collections.abc import Callable

import torch
from torch import Tensor


def amp_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], max_norm: float,
                   device_type: str = "cpu", dtype: torch.dtype = torch.float16) -> dict:
    """用 fp16 自动混合精度 (autocast) 和梯度缩放器 (GradScaler) 做一次训练步。

    约定 (contract)，按顺序：
    1. 在 `torch.autocast(device_type=device_type, dtype=dtype)` 里做前向：`loss = loss_fn(model(x), y)`。
    2. `scaler.scale(loss).backward()`：把 loss 乘上 scale，防止 fp16 的小梯度下溢 (underflow) 成 0。
    3. `scaler.unscale_(optimizer)`：先把梯度除回真实大小，**再**用
       `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)` 裁剪（否则裁剪的是放大后的梯度）。
    4. `scaler.step(optimizer)`（梯度里有 inf/NaN 时它会跳过这一步），然后 `scaler.update()`。
    5. `optimizer.zero_grad()`。
    返回 dict：`{"loss": float, "grad_norm": float（裁剪前、unscale 之后的总范数）,
    "skipped": bool（这一步是否被跳过：update 之后 scale 变小了就是跳过）}`。
    """
    raise NotImplementedError("请实现 amp_train_step")
