"""Run N uninterrupted 2-rank DDP trainings in a row and count clean exits (issue 9, defect 3).

    python tools/ddp_loop.py            # 20 runs; prints "k/20 exit 0" per run and a summary

Each run is the command a learner types (through ``python -m course_lib.launch``, i.e. torchrun),
on CPU with gloo, into a fresh folder. Before the barrier in ``distributed.cleanup`` about one
run in five ended with rank 1 aborting after the final checkpoint (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.distributed import run_streaming, torchrun_command  # noqa: E402

ARGS = {
    "max_steps": 8,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "ffn_hidden": 64,
    "max_seq_len": 64,
    "seq_len": 32,
    "batch_size": 4,
    "warmup_steps": 2,
    "eval_interval": 100,
    "eval_batches": 1,
    "log_interval": 2,
    "ckpt_interval": 4,
    "device": "cpu",
    "seed": 7,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="number of runs (default: 20)")
    p.add_argument("--nproc", type=int, default=2, help="processes per run (default: 2)")
    args = p.parse_args(argv)
    ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1, args.runs + 1):
            out = Path(tmp) / f"run{k}"
            flags = [
                x for key, v in dict(ARGS, out_dir=str(out)).items() for x in ("--" + key.replace("_", "-"), str(v))
            ] + ["--no-tensorboard"]
            rc, lines = run_streaming(
                torchrun_command(flags, nproc_per_node=args.nproc),
                env={"OMP_NUM_THREADS": "1", "COURSE_QUICK": "1"},
                timeout_s=600,
                echo=False,
            )
            ok += rc == 0
            print(f"{k}/{args.runs} exit {rc}", flush=True)
            if rc != 0:
                print("\n".join(lines[-15:]), flush=True)
    print(f"{ok}/{args.runs} exit 0", flush=True)
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
