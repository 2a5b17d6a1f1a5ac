"""WRONG on purpose (tests/test_grader_strength.py): LayerNorm's centring by mistake (subtracts the mean)."""

import torch
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Compute in float32: squaring bf16/fp16 values and averaging them loses precision
    # (and fp16 can overflow), the same reason Llama's RMSNorm upcasts.
    xf = x.float()
    xf = xf - xf.mean(dim=-1, keepdim=True)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y.to(x.dtype) * weight
