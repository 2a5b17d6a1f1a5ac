#!/usr/bin/env python3
"""KV cache vs no cache: decode tokens/s per context length on the trained reference model and on
the >= 20 M-parameter ``speed_config()`` (the target, >= 20x at 512 tokens of context with 1 thread,
is read on the latter, where a decode step is bandwidth-bound as in real serving, not overhead-bound),
and paged vs preallocated cache memory. Baselines are measured in the same run.
Threads are pinned (``BENCH_THREADS``, default 1); the sweep is repeated in rounds and each row
gives the median speed-up with its range over rounds in the name.

    python bench/kv_cache.py            # full: contexts 64 ... 1024
    COURSE_QUICK=1 python bench/kv_cache.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib.lab.measure import (
        decode_speed_vs_context,
        long_context_copy,
        paged_vs_static_memory,
        pin_threads,
        ratio_stats,
        speed_config,
    )
    from course_lib.pretrained import load_reference_model

    threads = pin_threads()
    torch.manual_seed(0)
    model, _ = load_reference_model()
    contexts = [64, 128, 256] if quick else [64, 128, 256, 512, 1024]
    big = long_context_copy(model, 1088)  # trained weights; RoPE tables (not stored) extended to 1088 positions
    rounds = 2 if quick else 3
    sweeps = [decode_speed_vs_context(big, contexts, new_tokens=8 if quick else 16, repeats=1) for _ in range(rounds)]
    rows = []
    for i, L in enumerate(contexts):
        sp = ratio_stats([sw[i]["speedup"] for sw in sweeps])
        cache = ratio_stats([sw[i]["cache_tok_s"] for sw in sweeps])["median"]
        nocache = ratio_stats([sw[i]["no_cache_tok_s"] for sw in sweeps])["median"]  # ratio: median of per-round ratios
        rows.append(
            {
                "name": f"decode tok/s with cache, reference model, context {L} ({threads} thread(s), "
                f"{rounds} rounds, speed-up range {sp['min']:.1f}-{sp['max']:.1f}x)",
                "value": cache,
                "unit": "tok/s",
                "baseline": nocache,
                "ratio": sp["median"],
                "target": None,
                "met": None,
            }
        )
    cfg = speed_config()
    L = 256 if quick else 512
    big_sweeps = [decode_speed_vs_context(cfg, [L], new_tokens=4 if quick else 8, repeats=1)[0] for _ in range(rounds)]
    sp = ratio_stats([r["speedup"] for r in big_sweeps])
    rows.append(
        {
            "name": f"decode tok/s with cache, speed_config d{cfg.d_model} x {cfg.n_layers} layers, context {L} "
            f"({threads} thread(s), {rounds} rounds, speed-up range {sp['min']:.1f}-{sp['max']:.1f}x)",
            "value": ratio_stats([r["cache_tok_s"] for r in big_sweeps])["median"],
            "unit": "tok/s",
            "baseline": ratio_stats([r["no_cache_tok_s"] for r in big_sweeps])["median"],
            "ratio": sp["median"],
            "target": ">= 20x",
            "met": sp["median"] >= 20.0,
        }
    )
    lengths = [40, 700, 130, 260, 35, 900, 75, 510]
    m = paged_vs_static_memory(big, lengths, max_len=1024, block_size=16)
    rows.append(
        {
            "name": f"paged KV memory, {len(lengths)} seqs of {min(lengths)}-{max(lengths)} tokens (block 16)",
            "value": m["paged_bytes"] / 1e6,
            "unit": "MB",
            "baseline": m["static_bytes"] / 1e6,
            "ratio": m["paged_bytes"] / m["static_bytes"],
            "target": f"waste {m['paged_waste']:.1%} vs {m['static_waste']:.1%} preallocated (max_len 1024)",
            "met": m["paged_bytes"] < m["static_bytes"],
        }
    )
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        met = "" if r["met"] is None else ("  [met]" if r["met"] else "  [NOT met]")
        tgt = f"  target {r['target']}" if r["target"] else ""
        print(
            f"{r['name']}: {r['value']:.4g} {r['unit']} vs baseline {r['baseline']:.4g} -> {r['ratio']:.2f}x{tgt}{met}"
        )


if __name__ == "__main__":
    print_rows(run(quick_mode()))
