#!/usr/bin/env python3
"""Train, export and record the reference model that lesson 4.2 and bench/ use.

    .venv/bin/python tools/train_reference_model.py            # train (~1 h on one thread of a busy 2-core machine) + export
    .venv/bin/python tools/train_reference_model.py --skip-train   # re-export an existing run

The model is trained with the project's own command, ``python -m course_lib.train``, in FULL
mode (``COURSE_QUICK`` removed from the environment) with every setting that matters given
explicitly below, so the run is reproducible. The latest checkpoint is then exported to the
inference artefact (``model.safetensors`` + ``config.json``) under
``course_lib/assets/reference_model/``, next to ``TRAINING.json`` that records the command, the
configs, the corpus SHA-256 and the final eval loss.

The shipped weights let lessons and benchmarks use a *trained* model without training in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSET_DIR = ROOT / "course_lib" / "assets" / "reference_model"

# Every setting that changes the result, spelled out (defaults could change under us).
TRAIN_ARGS = [
    "--d-model",
    "192",
    "--n-layers",
    "4",
    "--n-heads",
    "6",
    "--n-kv-heads",
    "2",
    "--ffn-hidden",
    "512",
    "--max-seq-len",
    "256",
    "--data",
    "stdlib",
    "--seq-len",
    "256",
    "--batch-size",
    "16",
    "--max-steps",
    "3000",
    "--lr",
    "0.002",
    "--min-lr",
    "0.0002",
    "--warmup-steps",
    "150",
    "--schedule",
    "cosine",
    "--dtype",
    "fp32",
    "--device",
    "cpu",
    "--seed",
    "1337",
    "--num-workers",
    "0",
    "--eval-interval",
    "500",
    "--eval-batches",
    "20",
    "--ckpt-interval",
    "500",
    "--log-interval",
    "50",
    "--no-resume",
    "--no-tensorboard",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out-dir",
        default=str(ROOT / "runs" / "reference-4.2"),
        help="training run folder (default: runs/reference-4.2, git-ignored)",
    )
    p.add_argument("--skip-train", action="store_true", help="only export the existing run's latest checkpoint")
    p.add_argument("--assets", default=str(ASSET_DIR), help="where to write the inference artefact")
    args = p.parse_args(argv)

    out_dir = Path(args.out_dir)
    cmd = [sys.executable, "-m", "course_lib.train", *TRAIN_ARGS, "--out-dir", str(out_dir)]
    env = {k: v for k, v in os.environ.items() if k != "COURSE_QUICK"}
    env["PYTHONHASHSEED"] = "0"
    env["OMP_NUM_THREADS"] = "1"  # one thread: the float sums (and so the weights) do not depend on the core count
    seconds = None
    if not args.skip_train:
        print("[reference] " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        seconds = round(time.perf_counter() - t0, 1)

    from course_lib.export import export_from_run

    assets = Path(args.assets)
    info = export_from_run(out_dir, assets)
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    manifest = json.loads((out_dir / "data_manifest.json").read_text())
    record = {
        "command": "python -m course_lib.train " + " ".join(TRAIN_ARGS) + " --out-dir runs/reference-4.2",
        "env": "COURSE_QUICK unset (full mode), PYTHONHASHSEED=0, OMP_NUM_THREADS=1",
        "recipe": "tools/train_reference_model.py",
        "checkpoint_step": info["step"],
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_train_loss": metrics[-1].get("loss") if metrics else None,
        "eval_losses": {str(m["step"]): round(m["eval_loss"], 4) for m in evals},
        "data": {
            **{k: manifest[k] for k in ("num_files", "num_documents", "num_chars", "sha256")},
            # the stdlib folder's absolute path says nothing on another machine; keep the version
            "source": "stdlib of Python " + ".".join(map(str, sys.version_info[:3]))
            if str(manifest["source"]).startswith("stdlib:")
            else manifest["source"],
        },
        "train_seconds": seconds,
        "machine": f"{os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.2f} at export",
        "torch": __import__("torch").__version__,
    }
    (assets / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"[reference] exported step {info['step']} to {assets}: "
        f"{info['bytes'] / 1e6:.2f} MB, eval loss {record['final_eval_loss']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
