"""Wrong on purpose: the loss mask is forgotten (every next token is a label, the prompt too)."""

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE = -100


def collate_packed(
    conversations: Sequence[tuple[Sequence[int], Sequence[bool]]], seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # 1. shift: inputs ids[:-1], labels ids[1:] where the *label* token is the assistant's
    examples = []
    for i, (ids, _mask) in enumerate(conversations):
        inp = list(ids[:-1])
        lab = list(ids[1:])  # WRONG: trains on the prompt and template tokens too
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
        for d, (inp, lab) in enumerate(row):
            n = len(inp)
            x[r, t : t + n] = torch.tensor(inp)
            y[r, t : t + n] = torch.tensor(lab)
            pos[r, t : t + n] = torch.arange(n)  # 4. positions restart per document
            doc[r, t : t + n] = d  # 3. one id per document
            t += n
        doc[r, t:] = len(row)  # the padding is one more document
        pos[r, t:] = torch.arange(seq_len - t)
    return x, y, pos, doc
