"""Symmetric absmax quantization: the one rounding rule every quantizer here shares.

``scale = max|x| / qmax`` over a slice (a weight row, a group of a row, one token's head
vector), ``q = round(x / scale)`` clamped to ``[qmin, qmax]``, so ``x ~= q * scale`` with an
error of at most ``scale / 2`` per element. int8 uses ``qmax = 127`` (and ``qmin = -127``,
keeping the range symmetric); int4 uses ``qmax = 7, qmin = -8`` (the extra code is free).
Used by quantize.py (int8 per channel, int4 per group, GPTQ's group scales) and kv_cache.py
(int8 per token). A leaf module: it imports nothing from course_lib.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12  # an all-zero slice gets a tiny scale instead of a division by zero (its q is 0)


def absmax_scale(x: Tensor, qmax: int, dim: int = -1, keepdim: bool = True) -> Tensor:
    """fp32 ``max|x| / qmax`` along ``dim``."""
    return x.detach().float().abs().amax(dim=dim, keepdim=keepdim).clamp_min(EPS) / qmax


def absmax_quantize(x: Tensor, qmax: int, dim: int = -1, qmin: int | None = None) -> tuple[Tensor, Tensor]:
    """``(q int8, scale fp32)`` with ``x ~= q * scale``; ``scale`` keeps ``dim`` with size 1."""
    scale = absmax_scale(x, qmax, dim)
    q = torch.round(x.detach().float() / scale).clamp_(-qmax if qmin is None else qmin, qmax)
    return q.to(torch.int8), scale
