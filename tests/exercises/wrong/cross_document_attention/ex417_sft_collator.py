"""Wrong on purpose: conversations concatenated with plain causal attention (one document per row,
positions counted over the whole row): every conversation sees the ones before it."""

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE = -100


def collate_packed(
    conversations: Sequence[tuple[Sequence[int], Sequence[bool]]], seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # 1. shift: inputs ids[:-1], labels ids[1:] where the *label* token is the assistant's
    examples = []
    for i, (ids, mask) in enumerate(conversations):
        inp = list(ids[:-1])
        lab = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
        if len(inp) > seq_len:
            raise ValueError(f"conversation {i}: {len(inp)} inputs do not fit seq_len={seq_len}")
        examples.append((inp, lab))
    # 2. greedy packing in order
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = seq_len + 1
    for inp, lab in examples:
        if used + len(inp) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((inp, lab))
        used += len(inp)
    x = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    y = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), seq_len), dtype=torch.long)
    doc = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for _d, (inp, lab) in enumerate(row):
            n = len(inp)
            x[r, t : t + n] = torch.tensor(inp)
            y[r, t : t + n] = torch.tensor(lab)
            pos[r, t : t + n] = torch.arange(t, t + n)  # WRONG: one position count per row
            doc[r, t : t + n] = 0  # WRONG: every document shares id 0 (plain causal attention)
            t += n
        doc[r, t:] = 0
        pos[r, t:] = torch.arange(t, seq_len)
    return x, y, pos, doc
