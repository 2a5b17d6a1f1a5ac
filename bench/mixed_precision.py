"""Training step time, fp32 vs bf16 autocast (and fp16 + GradScaler on CUDA), as a speed-up
ratio against fp32 measured in the same run with the same model, data and steps.

    python bench/mixed_precision.py
    COURSE_QUICK=1 python bench/mixed_precision.py

Target (from the issue): report the ratio. On CPU, bf16 autocast is often *slower* (CPUs
without AMX/AVX512-BF16 emulate bf16 matmuls, and autocast adds casts); on a recent NVIDIA
GPU, bf16/fp16 tensor cores are expected to beat fp32. Nothing is promised: the ratio is what
this machine does.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from course_lib.config import ModelConfig, TrainConfig, quick_mode  # noqa: E402
from course_lib.lab.plotting import print_table  # noqa: E402
from course_lib.train import Trainer  # noqa: E402


def step_time(dtype: str, steps: int, warmup: int = 2) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig.default(
            dtype=dtype,
            max_steps=warmup + steps,
            warmup_steps=1,
            out_dir=d,
            tensorboard=False,
            log_interval=10_000,
            eval_interval=10_000,
            ckpt_interval=0,
        )
        tr = Trainer(ModelConfig.small(), cfg, console=False, save_checkpoints=False)
        for _ in range(warmup):
            tr.train_step()
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps


def run(quick: bool) -> list[dict]:
    steps = 3 if quick else 12
    dtypes = ["fp32", "bf16"] + (["fp16"] if torch.cuda.is_available() else [])
    # two alternating rounds, best of two: the first measurement must not pay for warm-up alone
    times = {dt: float("inf") for dt in dtypes}
    for _ in range(2):
        for dt in dtypes:
            times[dt] = min(times[dt], step_time(dt, steps))
    rows = []
    for dt in dtypes:
        rows.append(
            {
                "name": f"train step {dt}"
                + (" (autocast)" if dt != "fp32" else "")
                + (" + GradScaler" if dt == "fp16" else ""),
                "value": round(times[dt] * 1000, 1),
                "unit": "ms/step",
                "baseline": round(times["fp32"] * 1000, 1),
                "ratio": round(times["fp32"] / times[dt], 2),
                "target": "report speed-up vs fp32 (hardware-dependent, no target)",
                "met": True,
            }
        )
    return rows


if __name__ == "__main__":
    rows = run(quick_mode())
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {dev}; model ModelConfig.small(), batch/seq from TrainConfig.default()")
    print_table(rows, ["name", "value", "unit", "baseline", "ratio", "target", "met"])
    print("ratio = fp32 time / this time (speed-up; < 1 means slower than fp32), same run.")
