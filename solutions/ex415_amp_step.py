"""练习 ex415 参考答案：autocast + GradScaler 训练步。"""

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
    with torch.autocast(device_type=device_type, dtype=dtype):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(loss.detach()), "grad_norm": grad_norm, "skipped": scaler.get_scale() < before}
