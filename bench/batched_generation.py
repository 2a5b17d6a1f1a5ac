#!/usr/bin/env python3
"""Batched generation throughput: batch-N vs batch-1 generated tokens/s (target >= 4x at
batch 8), KV cache on, measured in the same run on the shipped reference model.

    python bench/batched_generation.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib.measure import throughput_vs_batch
    from course_lib.pretrained import load_reference_model

    torch.manual_seed(0)
    model, _ = load_reference_model()
    sizes = [1, 2, 8] if quick else [1, 2, 4, 8, 16, 32]
    res = throughput_vs_batch(model, sizes, prompt_len=32, new_tokens=8 if quick else 32, repeats=1 if quick else 2)
    base = res[0]["decode_tok_s"]
    rows = []
    for r in res[1:]:
        t = r["batch_size"] == 8
        rows.append({"name": f"decode throughput, batch {r['batch_size']}", "value": r["decode_tok_s"], "unit": "tok/s",
                     "baseline": base, "ratio": r["vs_batch1"], "target": ">= 4x" if t else None,
                     "met": (r["vs_batch1"] >= 4) if t else None})
    return rows


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402  (same folder)
    print_rows(run(quick_mode()))
