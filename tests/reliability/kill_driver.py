"""A training run that can be SIGKILLed at a chosen point (used by test_kill_resume.py).

``run(out_dir, data, fault, log_path)`` trains the tiny config below with automatic resume.
``fault`` is ``"phase@step"`` or ``None``:

* step phases, injected here through a callback: ``batch`` (batch drawn, before forward),
  ``backward`` (gradients computed, before clipping and the optimizer step), ``step_end``
  (optimizer + scheduler stepped, metrics logged, before the checkpoint of that step);
* save phases, injected inside ``CheckpointManager.save`` (course_lib.faults, ``COURSE_FAULT``):
  ``save_begin``, ``save_partial`` (half of state.pt on disk), ``save_state_written``,
  ``save_marker_written`` (complete temp folder, not renamed), ``save_renamed`` (before
  rotation), ``save_rotated``;
* with ``strategy="fsdp"`` the checkpoints are sharded (DCP) and the save phases are
  ``faults.SHARDED_SAVE_PHASES`` inside ``ShardedCheckpointManager.save``: ``dcp_begin``,
  ``dcp_shard_written`` (the shard on disk, no ``.metadata``), ``dcp_saved``,
  ``dcp_trainer_written``, ``dcp_marker_written``, ``dcp_renamed``, ``dcp_rotated``.

The process kills itself with SIGKILL: nothing gets to clean up, as in a real crash.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

STEP_PHASES = ("batch", "backward", "step_end")
TINY_MODEL = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
MAX_STEPS, CKPT_INTERVAL = 16, 2


def train_config(out_dir: str, data: str, strategy: str = "ddp", overrides=None):
    """``overrides``: other TrainConfig fields (e.g. ``task="sft", init=...`` in test_sft_kill.py)."""
    from course_lib.config import TrainConfig

    kw = dict(
        data=data,
        max_steps=MAX_STEPS,
        batch_size=4,
        seq_len=32,
        warmup_steps=3,
        eval_interval=8,
        eval_batches=1,
        log_interval=1,
        ckpt_interval=CKPT_INTERVAL,
        keep_last=2,
        out_dir=out_dir,
        tensorboard=False,
        lr=3e-3,
        min_lr=3e-4,
        device="cpu",
        val_fraction=0.1,
        strategy=strategy,
    )
    return TrainConfig(**{**kw, **(overrides or {})})


def run(out_dir: str, data: str, fault, log_path: str, strategy: str = "ddp", overrides=None) -> None:
    import torch

    torch.set_num_threads(1)  # the reference and every resumed run use the same kernels
    from course_lib.config import ModelConfig
    from course_lib.faults import FAULT_ENV, fault_point
    from course_lib.train import Callback, Trainer

    os.environ[FAULT_ENV] = fault or ""

    class StepFaults(Callback):
        def on_batch(self, trainer, x, y):
            fault_point("batch", trainer.step + 1)
            return x, y

        def on_after_backward(self, trainer):
            fault_point("backward", trainer.step + 1)

        def on_step_end(self, trainer, metrics):
            fault_point("step_end", trainer.step)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(
            ModelConfig(**TINY_MODEL),
            train_config(out_dir, data, strategy, overrides),
            callbacks=[StepFaults()],
            console=False,
        )
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {
                    "fault": fault,
                    "resumed_step": trainer.step,
                    "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
                    "warnings": [str(w.message) for w in caught],
                }
            )
            + "\n"
        )
    trainer.fit()


def lineage(ctx, out_dir: str, data: str, points, strategy: str = "ddp", overrides=None) -> list:
    """One lineage: a chain of processes on one run folder, each killed at its fault point
    (``None`` last: the run that finishes). Returns the exit codes."""
    log = str(Path(out_dir) / "driver_log.jsonl")
    codes = []
    for fault in [*points, None]:
        p = ctx.Process(target=run, args=(out_dir, data, fault, log, strategy, overrides))
        p.start()
        p.join(120)
        if p.is_alive():
            p.kill()
            p.join()
        codes.append(p.exitcode)
    return codes
