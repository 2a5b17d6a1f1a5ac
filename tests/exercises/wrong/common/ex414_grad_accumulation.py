"""WRONG on purpose (tests/test_grader_strength.py): forgets to divide each micro-batch loss by N."""

from collections.abc import Callable

import torch
from torch import Tensor


def accumulation_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    max_norm: float = 0.0,
) -> float:
    n = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        loss = loss_fn(model(x), y)
        total += float(loss.detach()) / n
        loss.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
