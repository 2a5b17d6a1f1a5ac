"""WRONG on purpose (tests/test_grader_strength.py): forgets the 1/sqrt(head_dim) scale."""

import torch
from torch import Tensor


def attend_with_cache(q: Tensor, k_new: Tensor, v_new: Tensor, k_cache: Tensor, v_cache: Tensor):
    k = torch.cat([k_cache, k_new], dim=2)
    v = torch.cat([v_cache, v_new], dim=2)
    scores = q @ k.transpose(-2, -1)
    out = scores.softmax(dim=-1) @ v
    return out, k, v
