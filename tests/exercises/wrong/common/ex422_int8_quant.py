"""WRONG on purpose (tests/test_grader_strength.py): one scale for the whole tensor instead of one per output channel."""

import torch
from torch import Tensor


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    w = w.float()
    scale = (w.abs().amax().clamp_min(1e-12) / 127.0).expand(w.shape[0]).clone()
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale.float()[:, None]
