"""WRONG on purpose (tests/test_grader_strength.py): clips each gradient by its own norm instead of the global norm."""

from collections.abc import Iterable

import torch


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]  # one pass: may be a generator
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))
    for g in grads:
        coef = max_norm / (torch.linalg.vector_norm(g.detach().float()) + eps)
        if coef < 1:
            g.detach().mul_(coef.to(g.dtype))
    return total
