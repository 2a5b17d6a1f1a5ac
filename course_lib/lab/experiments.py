"""Small experiment grids built on ``course_lib.train.Trainer``: settings x seeds, summarised per cell.

Every run of a grid has the same length and, for the same seed, the same model initialisation and
the same data order (both come from ``TrainConfig.seed``), so two cells differ only in the settings
being compared. A run whose loss or gradient turns NaN/Inf is kept as *diverged* (its loss is
``inf`` from that step on) instead of stopping the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import mean

from ..config import ModelConfig, TrainConfig
from ..monitor import NonFiniteError
from ..train import Trainer
from .paths import runs_dir


def lr_warmup_grid(
    model_cfg: ModelConfig,
    lrs: Sequence[float],
    warmups: Sequence[int],
    seeds: Sequence[int],
    steps: int,
    name: str = "grid",
    on_cell: Callable[[dict], None] | None = None,
    **train_overrides,
) -> dict[tuple[float, int], list[list[float]]]:
    """Train one run per (peak lr, warmup steps, seed); return {(lr, warmup): [loss curve per seed]}.

    ``train_overrides`` go to ``TrainConfig.default`` (e.g. ``betas``, ``grad_clip``, ``batch_size``);
    the schedule decays to ``lr / 10`` by the last step in every run. ``on_cell(summary)`` is called
    after each (lr, warmup) cell with the dict ``cell_summary`` returns.
    """
    curves: dict[tuple[float, int], list[list[float]]] = {}
    for lr in lrs:
        for warm in warmups:
            runs = []
            for seed in seeds:
                cfg = TrainConfig.default(
                    max_steps=steps,
                    warmup_steps=warm,
                    lr=lr,
                    min_lr=lr / 10,
                    seed=seed,
                    out_dir=str(runs_dir(f"{name}/lr{lr:g}-w{warm}-s{seed}", fresh=True)),
                    ckpt_interval=0,
                    tensorboard=False,
                    eval_interval=steps,
                    eval_batches=1,
                    log_interval=steps,
                    resume=False,
                    **train_overrides,
                )
                trainer = Trainer(model_cfg, cfg, console=False, save_checkpoints=False)
                try:
                    losses = [r["loss"] for r in trainer.fit()]
                except NonFiniteError:
                    losses = [r["loss"] for r in trainer.history]
                losses += [math.inf] * (steps - len(losses))
                runs.append(losses)
            curves[(lr, warm)] = runs
            if on_cell is not None:
                on_cell(cell_summary(lr, warm, runs))
    return curves


def spike(losses: Sequence[float], within: int | None = None) -> float:
    """How far the loss rises above its first value (in the first ``within`` steps; default: the
    whole run, so a spike when a long warmup reaches the peak lr counts too). 0 = it never rose."""
    return max(losses[:within] if within else losses) - losses[0]


def final_loss(losses: Sequence[float], last: int = 10) -> float:
    """Mean training loss over the last ``last`` steps (``inf`` for a diverged run)."""
    tail = losses[-last:]
    return sum(tail) / len(tail)


def cell_summary(lr: float, warmup: int, runs: Sequence[Sequence[float]]) -> dict:
    """Mean over seeds (and the worst seed) of the loss spike and the final loss of one (lr, warmup) cell."""
    spikes = [spike(r) for r in runs]
    finals = [final_loss(r) for r in runs]
    return {
        "lr": lr,
        "warmup": warmup,
        "spike (mean)": mean(spikes),
        "spike (max seed)": max(spikes),
        "final loss (mean)": mean(finals),
        "final loss (worst seed)": max(finals),
        "diverged runs": sum(not math.isfinite(r[-1]) for r in runs),
    }
