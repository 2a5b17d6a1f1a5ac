"""WRONG on purpose (tests/test_grader_strength.py): pads on the right."""

import torch
from torch import Tensor


def left_pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one token")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos
