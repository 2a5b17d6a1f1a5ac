"""Learning-rate schedules: warmup, then constant / linear / cosine / warmup-stable-decay.

Convention (the same as Hugging Face's ``get_*_schedule_with_warmup``): the multiplier for
optimizer step ``s`` (0-based) is ``lr_lambda(s)``; during warmup it is ``s / warmup_steps``,
so the very first optimizer step uses lr = 0. Karpathy's build-nanogpt uses ``(s + 1) / warmup`` so
that no step is wasted; pass ``hf_convention=False`` for that (nanoGPT's train.py itself uses
``(it + 1) / (warmup_iters + 1)``). With ``min_lr_ratio = 0`` the linear
and cosine schedules give exactly HF's values.

``min_lr_ratio`` means the same for every decay (torchtitan's convention): the decay shape
``d(progress)`` runs from 1 to 0, and the multiplier is ``min + (1 - min) * d``, so the floor is
reached exactly at ``total_steps`` (not earlier) and held after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int, hf_convention: bool) -> float:
    s = step if hf_convention else step + 1
    return min(1.0, s / max(1, warmup_steps))


def lr_multiplier(
    step: int,
    *,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    decay_fraction: float = 0.2,
    hf_convention: bool = True,
) -> float:
    """Multiplier on the peak lr for optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return _warmup(step, warmup_steps, hf_convention)
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        # (total - step) / decay_steps rather than 1 - progress: bit-identical to HF when min is 0
        return min_lr_ratio + (1.0 - min_lr_ratio) * max(0.0, float(total_steps - step) / decay_steps)
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "wsd":
        decay_len = max(1, int(round(decay_fraction * total_steps)))
        decay_start = max(warmup_steps, total_steps - decay_len)
        if step < decay_start:
            return 1.0
        frac = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 - (1.0 - min_lr_ratio) * frac
    raise ValueError(f"unknown schedule {kind!r}; use constant, linear, cosine or wsd")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    decay_fraction: float = 0.2,
    hf_convention: bool = True,
) -> LambdaLR:
    """A ``LambdaLR``: call ``scheduler.step()`` once after every optimizer step.

    Its ``state_dict()`` holds the step count (``last_epoch``), which is all a resume needs: the
    function itself is rebuilt from the config.
    """
    return LambdaLR(
        optimizer, _multiplier(kind, warmup_steps, total_steps, min_lr_ratio, decay_fraction, hf_convention)
    )


def schedule_values(
    kind: str,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
    hf_convention: bool = True,
) -> list:
    """The lr for every step, for plots."""
    ratio = min_lr / peak_lr if peak_lr else 0.0
    f = _multiplier(kind, warmup_steps, total_steps, ratio, decay_fraction, hf_convention)
    return [peak_lr * f(s) for s in range(total_steps)]


def _multiplier(
    kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float, decay_fraction: float, hf_convention: bool
) -> Callable[[int], float]:
    """``lr_multiplier`` with everything but the step fixed."""
    return partial(
        lr_multiplier,
        kind=kind,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
        decay_fraction=decay_fraction,
        hf_convention=hf_convention,
    )
