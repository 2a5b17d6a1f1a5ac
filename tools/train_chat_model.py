#!/usr/bin/env python3
"""Fine-tune the reference model into the small chat model shipped in course_lib/assets/chat_model/.

    .venv/bin/python tools/train_chat_model.py               # SFT (~3.5 min of one thread: 198 CPU-s measured) + export + demo
    .venv/bin/python tools/train_chat_model.py --skip-train  # re-export an existing run and redo the demo

SFT with the project's own command, ``python -m course_lib.train --task sft --init reference``, on the
standard-library instruction pairs (``course_lib.sft.stdlib_instruction_pairs``: docstring -> function
and function -> docstring, 5% of the functions held out), in FULL mode with every setting that
matters given explicitly. The latest checkpoint is exported as bf16 (the weights size budget:
<= 3.5 MB, half the fp32 reference model's) next to ``TRAINING.json`` (command, configs, data SHA-256,
held-out loss before and after, thread-seconds spent) and ``DEMO.txt`` (the model answering held-out
instructions, with the sampling settings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSET_DIR = ROOT / "course_lib" / "assets" / "chat_model"
SIZE_BUDGET_BYTES = 3_500_000

TRAIN_ARGS = [
    "--task",
    "sft",
    "--init",
    "reference",
    "--data",
    "stdlib",
    "--seq-len",
    "256",
    "--batch-size",
    "16",
    "--max-steps",
    "150",
    "--lr",
    "0.001",
    "--min-lr",
    "0.0001",
    "--warmup-steps",
    "10",
    "--schedule",
    "cosine",
    "--weight-decay",
    "0.1",
    "--dtype",
    "fp32",
    "--device",
    "cpu",
    "--seed",
    "1337",
    "--num-workers",
    "0",
    "--val-fraction",
    "0.05",
    "--eval-interval",
    "50",
    "--eval-batches",
    "10",
    "--ckpt-interval",
    "50",
    "--log-interval",
    "20",
    "--no-resume",
    "--no-tensorboard",
]
DEMO_SAMPLING = dict(temperature=0.0, top_k=None, top_p=None, max_new_tokens=160, seed=0)


def heldout_loss(model, cfg, ev) -> float:
    """Mean loss on the held-out conversations' assistant tokens (what the run's eval_loss measures)."""
    import torch

    losses = []
    with torch.no_grad():
        for x, y, doc in ev.batches(cfg.batch_size, cfg.eval_batches):
            losses.append(float(model(x, targets=y, document_ids=doc).loss))
    return sum(losses) / len(losses)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "chat-sft"), help="training run folder (git-ignored)")
    p.add_argument("--skip-train", action="store_true", help="only export the existing run and redo the demo")
    p.add_argument("--assets", default=str(ASSET_DIR), help="where to write the inference artefact")
    args = p.parse_args(argv)

    out_dir = Path(args.out_dir)
    cmd = [sys.executable, "-m", "course_lib.train", *TRAIN_ARGS, "--out-dir", str(out_dir)]
    env = {k: v for k, v in os.environ.items() if k != "COURSE_QUICK"}
    env["PYTHONHASHSEED"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    seconds = cpu_seconds = None
    if not args.skip_train:
        print("[chat] " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        seconds = round(time.perf_counter() - t0, 1)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = round(ru.ru_utime + ru.ru_stime, 1)
        (out_dir / "train_time.json").write_text(
            json.dumps({"train_seconds": seconds, "train_cpu_seconds": cpu_seconds})
        )

    import torch

    torch.set_num_threads(1)
    from course_lib.config import TrainConfig
    from course_lib.export import export_from_run, load_inference
    from course_lib.pretrained import load_reference_model
    from course_lib.sft import chat_demo

    assets = Path(args.assets)
    info = export_from_run(out_dir, assets, dtype=torch.bfloat16)
    size = (assets / "model.safetensors").stat().st_size
    assert size <= SIZE_BUDGET_BYTES, f"{size} bytes > budget {SIZE_BUDGET_BYTES}"
    cfg = TrainConfig.default(**json.loads((out_dir / "config.json").read_text())["train"])
    model, tok, _ = load_inference(assets)
    ref, _ = load_reference_model()
    from course_lib.sft import build_sft_datasets

    _, ev, _ = build_sft_datasets(cfg, tok)
    before, after = heldout_loss(ref, cfg, ev), heldout_loss(model, cfg, ev)
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    demo = chat_demo(model, tok, n=4, **DEMO_SAMPLING)
    (assets / "DEMO.txt").write_text(demo, encoding="utf-8")
    manifest = json.loads((out_dir / "data_manifest.json").read_text())
    record = {
        "command": "python -m course_lib.train " + " ".join(TRAIN_ARGS) + " --out-dir runs/chat-sft",
        "env": "COURSE_QUICK unset (full mode), PYTHONHASHSEED=0, OMP_NUM_THREADS=1",
        "recipe": "tools/train_chat_model.py",
        "init": "course_lib/assets/reference_model (see its TRAINING.json)",
        "checkpoint_step": info["step"],
        "stored_dtype": "bfloat16",
        "weights_bytes": size,
        "weights_budget_bytes": SIZE_BUDGET_BYTES,
        "heldout_assistant_loss_before_sft": round(before, 4),
        "heldout_assistant_loss_after_sft": round(after, 4),
        "eval_losses": {str(m["step"]): round(m["eval_loss"], 4) for m in evals},
        "final_train_loss": metrics[-1].get("loss") if metrics else None,
        "data": {
            "source": "stdlib instruction pairs of Python " + ".".join(map(str, sys.version_info[:3])),
            "sha256": manifest.get("sha256"),
            "train_conversations": manifest.get("num_documents"),
        },
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "machine": f"{os.cpu_count()} CPU threads shared, load average {os.getloadavg()[0]:.2f} at export",
        "torch": torch.__version__,
    }
    if args.skip_train and (out_dir / "train_time.json").exists():
        record.update(json.loads((out_dir / "train_time.json").read_text()))
    (assets / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"[chat] exported step {info['step']} to {assets}: {size / 1e6:.2f} MB; held-out loss "
        f"{before:.3f} -> {after:.3f}",
        flush=True,
    )
    print(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
