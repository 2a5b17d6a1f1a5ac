"""Checkpoint overhead: time spent saving checkpoints as a share of training time, at the
default interval (TrainConfig.default().ckpt_interval), measured in the same run.

    python bench/checkpoint_overhead.py        # COURSE_QUICK=1 for a short smoke run
Target (issue 3): save time <= 5% of training time.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import ModelConfig, TrainConfig, quick_mode  # noqa: E402
from course_lib.lab.plotting import print_table  # noqa: E402
from course_lib.train import Trainer  # noqa: E402

TARGET = 0.05


def run(quick: bool) -> list[dict]:
    interval = TrainConfig.default().ckpt_interval
    steps = 3 * interval
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig.default(
            max_steps=steps, out_dir=d, tensorboard=False, eval_interval=steps, device="cpu" if quick else "auto"
        )
        trainer = Trainer(ModelConfig.small(), cfg, console=False)
        t0 = time.perf_counter()
        trainer.fit()
        total = time.perf_counter() - t0
        saves = trainer.ckpt.total_save_seconds
        size = sum(p.stat().st_size for p in Path(d, "checkpoints").rglob("state.pt")) / max(
            1, len(list(Path(d, "checkpoints").glob("step_*")))
        )
    train_only = total - saves
    share = saves / train_only
    n_saves = steps // interval
    return [
        {
            "name": f"checkpoint save time / training time (interval {interval}, {n_saves} saves, "
            f"{size / 2**20:.1f} MiB each, {trainer.model.num_parameters():,} params)",
            "value": saves,
            "unit": "s",
            "baseline": train_only,
            "ratio": share,
            "target": f"<= {TARGET:.0%}",
            "met": share <= TARGET,
        }
    ]


def main() -> None:
    rows = run(quick_mode())
    print_table(
        [
            {
                "name": r["name"],
                "save_s": r["value"],
                "train_s": r["baseline"],
                "share": f"{r['ratio']:.2%}",
                "target": r["target"],
                "met": r["met"],
            }
            for r in rows
        ]
    )


if __name__ == "__main__":
    main()
