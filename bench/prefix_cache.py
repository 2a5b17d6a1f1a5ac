#!/usr/bin/env python3
"""Prefix caching and chunked prefill on the reference model (lesson 4.2.6).

1. A Poisson trace where 80% of the requests share a 128-token prefix (half the reference model's
   256-token context), replayed with the prefix cache off and on: prefill tokens computed (target
   on/off <= 0.4x) and p95 time to first token (target <= 0.5x). Arrivals at 0.7x of what the engine
   without a cache serves on this machine, measured first on a burst of the same kind of requests.
2. Four streams decoding while 240-token prompts keep arriving: p95 inter-token latency of the
   streams with chunked prefill (32-token chunks) vs one-forward prefill (target <= 0.5x).

Both: the two variants interleave (order flips every round), every figure is the median over rounds
with its range, and the outputs of the two variants are asserted identical.

    python bench/prefix_cache.py            # COURSE_QUICK=1 for a short run
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode

THREADS = 1


def _med_range(xs):
    return statistics.median(xs), min(xs), max(xs)


def prefix_rows(model, tok, quick: bool) -> list[dict]:
    from course_lib.lab.serving import prefix_cache_experiment

    rounds = 2 if quick else 3
    raw = prefix_cache_experiment(model, tok, n=16 if quick else 40, rounds=rounds)
    off = [r for r in raw if not r["cache"]]
    on = [r for r in raw if r["cache"]]
    assert all(a["outputs"] == b["outputs"] for a, b in zip(off, on, strict=True)), (
        "the prefix cache changed the generated tokens"
    )
    print(f"prefix trace: {off[0]['requests']} requests at {off[0]['rate']:.1f} req/s; torch threads = {THREADS}")
    for name, rs in (("cache off", off), ("cache on", on)):
        print(
            f"  {name:>9}: prefill tokens {statistics.median(r['prefill_tokens'] for r in rs):7.0f}  "
            f"hit rate {statistics.median(r['hit_rate'] for r in rs):.2f}  "
            f"TTFT p50 {1000 * statistics.median(r['ttft_p50'] for r in rs):6.1f} ms "
            f"p95 {1000 * statistics.median(r['ttft_p95'] for r in rs):6.1f} ms  "
            f"{statistics.median(r['tok_s'] for r in rs):6.1f} tok/s"
        )
    rows = []
    med, lo, hi = _med_range([b["prefill_tokens"] / a["prefill_tokens"] for a, b in zip(off, on, strict=True)])
    rows.append(
        {
            "name": f"prefill tokens computed, prefix cache on / off, 80% share 128 tokens "
            f"(range {lo:.2f}-{hi:.2f}x, {rounds} rounds)",
            "value": statistics.median(r["prefill_tokens"] for r in on),
            "unit": "tokens",
            "baseline": statistics.median(r["prefill_tokens"] for r in off),
            "ratio": med,
            "target": "<= 0.4x",
            "met": med <= 0.4,
        }
    )
    med, lo, hi = _med_range([b["ttft_p95"] / a["ttft_p95"] for a, b in zip(off, on, strict=True)])
    rows.append(
        {
            "name": f"p95 TTFT, prefix cache on / off, same trace (range {lo:.2f}-{hi:.2f}x, {rounds} rounds)",
            "value": 1000 * statistics.median(r["ttft_p95"] for r in on),
            "unit": "ms",
            "baseline": 1000 * statistics.median(r["ttft_p95"] for r in off),
            "ratio": med,
            "target": "<= 0.5x",
            "met": med <= 0.5,
        }
    )
    return rows


def chunked_rows(model, quick: bool) -> list[dict]:
    from course_lib.lab.serving import chunked_prefill_experiment

    rounds = 2 if quick else 3
    raw = chunked_prefill_experiment(model, chunk=32, rounds=rounds, n_long=4 if quick else 8)
    plain = [r for r in raw if r["chunk"] is None]
    chunk = [r for r in raw if r["chunk"] is not None]
    assert all(a["outputs"] == b["outputs"] for a, b in zip(plain, chunk, strict=True)), (
        "chunked prefill changed the generated tokens"
    )
    for name, rs in (("one forward", plain), ("chunks of 32", chunk)):
        print(
            f"  {name:>12}: stream ITL p50 {1000 * statistics.median(r['itl_p50'] for r in rs):6.1f} ms "
            f"p95 {1000 * statistics.median(r['itl_p95'] for r in rs):6.1f} ms "
            f"max {1000 * statistics.median(r['itl_max'] for r in rs):6.1f} ms  "
            f"long-prompt TTFT p50 {1000 * statistics.median(r['long_ttft_p50'] for r in rs):6.1f} ms"
        )
    med, lo, hi = _med_range([b["itl_p95"] / a["itl_p95"] for a, b in zip(plain, chunk, strict=True)])
    return [
        {
            "name": f"p95 inter-token latency of 4 streams while 240-token prompts arrive, chunked (32) / "
            f"one-forward prefill (range {lo:.2f}-{hi:.2f}x, {rounds} rounds)",
            "value": 1000 * statistics.median(r["itl_p95"] for r in chunk),
            "unit": "ms",
            "baseline": 1000 * statistics.median(r["itl_p95"] for r in plain),
            "ratio": med,
            "target": "<= 0.5x",
            "met": med <= 0.5,
        }
    ]


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib.pretrained import load_reference_model

    torch.set_num_threads(THREADS)  # pinned: the ratios compare scheduling, not thread scaling
    torch.manual_seed(0)
    model, tok = load_reference_model()
    return prefix_rows(model, tok, quick) + chunked_rows(model, quick)


if __name__ == "__main__":
    from kv_cache import print_rows

    print_rows(run(quick_mode()))
