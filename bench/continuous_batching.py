#!/usr/bin/env python3
"""Continuous vs static batching on the same bounded Poisson arrival traces (reference model).

Targets: continuous/static throughput (generated tokens/s) >= 1.5x at the highest offered load,
and a lower p95 time to first token (TTFT). Arrivals are replayed on a virtual clock (idle time
is skipped, never slept); the two policies alternate order across rounds; each figure is the
median over rounds with its range. Also a loopback HTTP load test through the real server and
the official `openai` client: every response compared with generating that prompt alone.

    python bench/continuous_batching.py            # COURSE_QUICK=1 for a short run
"""

from __future__ import annotations

import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode

PROMPTS = ["def ", "import os\n", "class Foo:\n    ", "    return ", "for i in range(", "x = ", "# ", "if __name__"]
THREADS = 1


def _med_range(xs):
    return statistics.median(xs), min(xs), max(xs)


def batching_rows(model, tok, quick: bool) -> list[dict]:
    from course_lib.lab.serving import batching_experiment

    loads = (0.5, 2.0) if quick else (0.5, 1.0, 2.0)
    rows_raw = batching_experiment(
        model, [tok.encode(p) for p in PROMPTS], loads=loads, n=24 if quick else 48, rounds=2 if quick else 3
    )
    print(f"decode step at batch 8: {1000 * rows_raw[0]['step_s']:.1f} ms; torch threads = {THREADS}")
    rows = []
    for load in loads:
        by = {p: [r for r in rows_raw if r["load"] == load and r["policy"] == p] for p in ("static", "continuous")}
        assert all(s["outputs"] == c["outputs"] for s, c in zip(by["static"], by["continuous"], strict=True)), (
            "static and continuous batching produced different tokens for the same trace"
        )
        tput = [c["tok_s"] / s["tok_s"] for s, c in zip(by["static"], by["continuous"], strict=True)]
        ttft = [s["ttft_p95"] / c["ttft_p95"] for s, c in zip(by["static"], by["continuous"], strict=True)]
        top = load == max(loads)
        rate = by["static"][0]["rate"]
        for pol in ("static", "continuous"):
            m = {
                k: statistics.median(r[k] for r in by[pol])
                for k in ("tok_s", "ttft_p50", "ttft_p95", "tpot_p50", "tpot_p95", "idle_rows")
            }
            print(
                f"  load {load:.1f} ({rate:.1f} req/s) {pol:>10}: {m['tok_s']:7.1f} tok/s  "
                f"TTFT p50 {1000 * m['ttft_p50']:7.1f} ms p95 {1000 * m['ttft_p95']:7.1f} ms  "
                f"TPOT p50 {1000 * m['tpot_p50']:5.1f} ms p95 {1000 * m['tpot_p95']:5.1f} ms  "
                f"idle rows {m['idle_rows']:.0f}"
            )
        med, lo, hi = _med_range(tput)
        rows.append(
            {
                "name": f"throughput continuous vs static, load {load:.1f} (range {lo:.2f}-{hi:.2f}x)",
                "value": statistics.median(r["tok_s"] for r in by["continuous"]),
                "unit": "tok/s",
                "baseline": statistics.median(r["tok_s"] for r in by["static"]),
                "ratio": med,
                "target": ">= 1.5x" if top else None,
                "met": (med >= 1.5) if top else None,
            }
        )
        med, lo, hi = _med_range(ttft)
        rows.append(
            {
                "name": f"p95 TTFT static / continuous, load {load:.1f} (range {lo:.2f}-{hi:.2f}x)",
                "value": 1000 * statistics.median(r["ttft_p95"] for r in by["continuous"]),
                "unit": "ms",
                "baseline": 1000 * statistics.median(r["ttft_p95"] for r in by["static"]),
                "ratio": med,
                "target": "> 1x (continuous lower)" if top else None,
                "met": (med > 1) if top else None,
            }
        )
    return rows


def http_load_row(model, tok, n: int) -> dict:
    """n requests through uvicorn + the openai client, 16 at a time; 0 lost or corrupted."""
    import openai
    import torch

    from course_lib.engine import Engine
    from course_lib.generate import generate
    from course_lib.serve import ServerThread, create_app

    jobs = [(PROMPTS[i % len(PROMPTS)], 1 + i % 8, i % 3 == 0) for i in range(n)]
    want = {}
    for p, m, _ in jobs:
        if (p, m) not in want:
            ids = generate(model, torch.tensor([tok.encode(p)]), m, eos_id=tok.eos_id, pad_id=tok.pad_id)[0]
            want[(p, m)] = tok.decode([t for t in ids.tolist() if t < 256])
    engine = Engine(model, eos_id=tok.eos_id, max_batch=8)
    with ServerThread(create_app(engine, tok, "reference_model")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def one(job):
            p, m, stream = job
            try:
                r = client.completions.create(
                    model="reference_model", prompt=p, max_tokens=m, temperature=0, stream=stream
                )
                return "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
            except openai.OpenAIError:
                return None

        with ThreadPoolExecutor(max_workers=16) as pool:
            got = list(pool.map(one, jobs))
    lost = sum(g is None for g in got)
    bad = sum(g is not None and g != want[j[:2]] for j, g in zip(jobs, got, strict=True))
    print(f"HTTP load test: {n} requests, {lost} lost, {bad} corrupted, {engine.steps} engine steps")
    return {
        "name": f"loopback HTTP load test: {n} requests, lost + corrupted responses",
        "value": lost + bad,
        "unit": "responses",
        "baseline": n,
        "ratio": (n - lost - bad) / n,
        "target": "0 lost or corrupted",
        "met": lost + bad == 0,
    }


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib.pretrained import load_reference_model

    torch.set_num_threads(THREADS)  # pinned: the ratios compare scheduling, not thread scaling
    torch.manual_seed(0)
    model, tok = load_reference_model()
    return batching_rows(model, tok, quick) + [http_load_row(model, tok, 200)]


if __name__ == "__main__":
    from kv_cache import print_rows

    print_rows(run(quick_mode()))
