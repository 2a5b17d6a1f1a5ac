#!/usr/bin/env python3
"""Batched generation throughput: batch-N vs batch-1 generated tokens/s (target >= 4x at
batch 8), KV cache on, measured in the same run on the shipped reference model. Threads pinned
(``BENCH_THREADS``, default 1); the sweep runs in rounds, median ratio with its range.

    python bench/batched_generation.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib.lab.measure import pin_threads, ratio_stats, throughput_vs_batch
    from course_lib.pretrained import load_reference_model

    threads = pin_threads()
    torch.manual_seed(0)
    model, _ = load_reference_model()
    sizes = [1, 2, 8] if quick else [1, 2, 4, 8, 16, 32]
    rounds = 2 if quick else 3
    sweeps = [
        throughput_vs_batch(model, sizes, prompt_len=32, new_tokens=8 if quick else 32, repeats=1)
        for _ in range(rounds)
    ]
    base = ratio_stats([sw[0]["decode_tok_s"] for sw in sweeps])["median"]
    rows = []  # value and baseline: medians over rounds; ratio: the median of the per-round ratios
    for i, b in enumerate(sizes[1:], start=1):
        ratio = ratio_stats([sw[i]["vs_batch1"] for sw in sweeps])
        tok = ratio_stats([sw[i]["decode_tok_s"] for sw in sweeps])["median"]
        t = b == 8
        rows.append(
            {
                "name": f"decode throughput, batch {b} ({threads} thread(s), {rounds} rounds, "
                f"range {ratio['min']:.1f}-{ratio['max']:.1f}x)",
                "value": tok,
                "unit": "tok/s",
                "baseline": base,
                "ratio": ratio["median"],
                "target": ">= 4x" if t else None,
                "met": (ratio["median"] >= 4) if t else None,
            }
        )
    return rows


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402  (same folder)

    print_rows(run(quick_mode()))
