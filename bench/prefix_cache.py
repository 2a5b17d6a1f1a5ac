#!/usr/bin/env python3
"""Prefix caching and chunked prefill on the reference model (lesson 4.2.6), then on the speed model.

1. A Poisson trace where 80% of the requests share a 128-token prefix (half the reference model's
   256-token context), replayed with the prefix cache off and on: prefill tokens computed (target
   on/off <= 0.4x) and p95 time to first token (target <= 0.5x). Arrivals at 0.7x of what the engine
   without a cache serves on this machine, measured first on a burst of the same kind of requests.
2. Four streams decoding while 240-token prompts keep arriving: p95 inter-token latency of the
   streams with chunked prefill (32-token chunks) vs one-forward prefill (target <= 0.5x).

3. Both again on the 22.3 M speed model (random init, 1088-token window) with a 512-token shared
   prefix and 960-token long prompts: on the 1.6 M reference model a step costs about the same
   whatever it computes (per-step overhead), so saved prefill tokens hardly move the latencies;
   here prefill is compute, as on a real server.

All: the two variants interleave (order flips every round), every figure is the median over rounds
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


def prefix_rows(model, tok, quick: bool, prefix_len: int = 128, n: int | None = None, label: str = "") -> list[dict]:
    from course_lib.lab.serving import prefix_cache_experiment

    rounds = 2 if quick else 3
    n = n or (16 if quick else 40)
    raw = prefix_cache_experiment(model, tok, n=n, rounds=rounds, prefix_len=prefix_len)
    off = [r for r in raw if not r["cache"]]
    on = [r for r in raw if r["cache"]]
    assert all(a["outputs"] == b["outputs"] for a, b in zip(off, on, strict=True)), (
        "the prefix cache changed the generated tokens"
    )
    print(
        f"prefix trace{label}: {off[0]['requests']} requests at {off[0]['rate']:.1f} req/s; torch threads = {THREADS}"
    )
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
            "name": f"prefill tokens computed{label}, prefix cache on / off, 80% share {prefix_len} tokens "
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
            "name": f"p95 TTFT{label}, prefix cache on / off, same trace (range {lo:.2f}-{hi:.2f}x, {rounds} rounds)",
            "value": 1000 * statistics.median(r["ttft_p95"] for r in on),
            "unit": "ms",
            "baseline": 1000 * statistics.median(r["ttft_p95"] for r in off),
            "ratio": med,
            "target": "<= 0.5x",
            "met": med <= 0.5,
        }
    )
    return rows


def chunked_rows(model, quick: bool, long_len: int = 240, chunk: int = 32, label: str = "") -> list[dict]:
    from course_lib.lab.serving import chunked_prefill_experiment

    rounds = 2 if quick else 3
    raw = chunked_prefill_experiment(
        model,
        chunk=chunk,
        rounds=rounds,
        n_long=4 if quick else 8,
        long_len=long_len,
        max_step_tokens=max(512, long_len + 64),
    )
    plain = [r for r in raw if r["chunk"] is None]
    chunked = [r for r in raw if r["chunk"] is not None]
    assert all(a["outputs"] == b["outputs"] for a, b in zip(plain, chunked, strict=True)), (
        "chunked prefill changed the generated tokens"
    )
    print(f"long prompts{label}: {long_len} tokens, chunks of {chunk}")
    for name, rs in (("one forward", plain), (f"chunks of {chunk}", chunked)):
        print(
            f"  {name:>12}: stream ITL p50 {1000 * statistics.median(r['itl_p50'] for r in rs):6.1f} ms "
            f"p95 {1000 * statistics.median(r['itl_p95'] for r in rs):6.1f} ms "
            f"max {1000 * statistics.median(r['itl_max'] for r in rs):6.1f} ms  "
            f"long-prompt TTFT p50 {1000 * statistics.median(r['long_ttft_p50'] for r in rs):6.1f} ms"
        )
    med, lo, hi = _med_range([b["itl_p95"] / a["itl_p95"] for a, b in zip(plain, chunked, strict=True)])
    return [
        {
            "name": f"p95 inter-token latency of 4 streams{label} while {long_len}-token prompts arrive, "
            f"chunked ({chunk}) / one-forward prefill (range {lo:.2f}-{hi:.2f}x, {rounds} rounds)",
            "value": 1000 * statistics.median(r["itl_p95"] for r in chunked),
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
    rows = prefix_rows(model, tok, quick) + chunked_rows(model, quick)
    return rows + speed_model_rows(tok, quick)


def speed_model_rows(tok, quick: bool) -> list[dict]:
    """The same two experiments where prefill is compute, not per-step overhead: the speed model
    (measure.speed_config: 22.3 M parameters, random init, 1088-token window; 2.8 M in quick mode)
    with a 512-token shared prefix and 960-token long prompts. Speed does not depend on what the
    weights learned, and both variants are asserted to give the same tokens."""
    from course_lib.lab.measure import as_model, speed_config

    cfg = speed_config(quick)
    model = as_model(cfg)
    label = f" [speed model {model.num_parameters() / 1e6:.1f} M]"
    prefix_len, long_len = (256, 480) if quick else (512, 960)
    return prefix_rows(model, tok, quick, prefix_len=prefix_len, n=8 if quick else 24, label=label) + chunked_rows(
        model, quick, long_len=long_len, chunk=64, label=label
    )


if __name__ == "__main__":
    from kv_cache import print_rows

    print_rows(run(quick_mode()))
