"""WRONG on purpose (tests/test_grader_strength.py): the scheduler state is neither saved nor restored."""

import argparse
import json
import math
import os
import random
import re
import sys
from pathlib import Path

import torch

# ---------------------------------------------------------------- 已经写好的部分（不用改）
# Find the repository's course_lib when the file is run as `python exercises/ex411_...py`.
for _parent in Path(__file__).resolve().parents:
    if (_parent / "course_lib").is_dir():
        sys.path.insert(0, str(_parent))
        break

from safetensors.torch import save_file

from course_lib.config import ModelConfig
from course_lib.data import build_datasets
from course_lib.model import DIYModel


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="可恢复的训练脚本 (resumable training script)")
    ap.add_argument("--out-dir", required=True, help="输出目录：checkpoints/、metrics.jsonl、final_model.safetensors")
    ap.add_argument("--max-steps", type=int, default=12, help="优化器步 (optimizer step) 总数")
    ap.add_argument("--save-every", type=int, default=4, help="每完成多少步保存一次 checkpoint")
    ap.add_argument("--log-every", type=int, default=2, help="每多少步写一行日志")
    ap.add_argument("--warmup-steps", type=int, default=3, help="线性预热的步数")
    ap.add_argument("--lr", type=float, default=3e-3, help="预热结束时的峰值学习率")
    ap.add_argument("--grad-clip", type=float, default=0.5, help="梯度裁剪的最大全局范数")
    ap.add_argument("--seed", type=int, default=0, help="随机种子")
    return ap.parse_args(argv)


def build(args):
    """Model and data from course_lib: a tiny model with dropout, so the RNG matters."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = ModelConfig(
        d_model=32,
        n_layers=1,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=64,
        max_seq_len=32,
        dropout=0.1,
        tie_embeddings=False,
    )
    model = DIYModel(cfg)
    dataset, _, _ = build_datasets("stdlib", seq_len=32, batch_size=4, seed=args.seed, max_bytes=50_000)
    return model, dataset


def lr_factor(step, warmup_steps, max_steps):
    """学习率倍数 (LambdaLR 的 lr_lambda)：第 step 个优化器步 (从 0 数) 用 lr * lr_factor(step)。"""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_final_weights(model, out_dir):
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(Path(out_dir) / "final_model.safetensors"),
    )


# ---------------------------------------------------------------- 你的部分
CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: Path):
    """Newest complete checkpoint by step number; half-written files are only ever *.tmp."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step_*.pt") if (m := CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(path: Path, model, optimizer, scheduler, step, dataset, args):
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "data": dataset.state_dict(step),  # one batch per step: batches used == step
        "config": vars(args),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: the final name only ever holds a whole file


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    model, dataset = build(args)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args.warmup_steps, args.max_steps))

    start = 0
    path = latest_checkpoint(ckpt_dir)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dataset.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        start = state["step"]
        print(f"resumed from {path.name} at step {start}")

    batches = iter(dataset)  # no DataLoader: its iterator would draw a seed from the RNG
    with open(out_dir / "metrics.jsonl", "a") as log:
        for step in range(start, args.max_steps):
            x, y = next(batches)
            loss = model(x, targets=y).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if step % args.log_every == 0:
                row = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(row)
            if (step + 1) % args.save_every == 0:
                save_checkpoint(
                    ckpt_dir / f"step_{step + 1:08d}.pt", model, optimizer, scheduler, step + 1, dataset, args
                )
    save_final_weights(model, out_dir)
    print("done")


if __name__ == "__main__":
    main()
