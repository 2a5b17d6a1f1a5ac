#!/usr/bin/env python3
"""Speculative decoding with prompt lookup (n-gram) proposals on the shipped reference model:
greedy tokens/s vs plain cached decode, batch 1, tokens per verify step, and the measured cost of
one (k + 1)-token verify forward against a 1-token decode forward (what bounds the speed-up); and the
engine path (``Engine(speculative=SpecConfig(NgramProposer(), k))``) against the plain engine, at
batch 1 and with all prompts in one running batch (one ragged verify forward per step).
Threads pinned (``BENCH_THREADS``, default 1); candidates interleaved in rounds, median and range.

    python bench/speculative.py
    BENCH_SPEC_RUN=runs/my_22m python bench/speculative.py   # also on a model you trained (>= 20 M: target 1.5x)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def run(quick: bool) -> list[dict]:
    from course_lib.engine import Engine
    from course_lib.generate import generate
    from course_lib.lab.measure import interleaved_rounds, pin_threads
    from course_lib.lab.serving import verify_forward_seconds
    from course_lib.pretrained import heldout_tokens, load_reference_model
    from course_lib.speculative import NgramProposer, SpecConfig, speculative_generate

    threads = pin_threads()
    model, _ = load_reference_model()
    held = heldout_tokens()
    n_prompts, prompt_len, new = (2, 64, 32) if quick else (5, 96, 128)
    prompts = [held[i * 997 : i * 997 + prompt_len][None] for i in range(n_prompts)]
    k = 4
    rounds = 2 if quick else 5
    stats = []

    def plain() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            generate(model, p, new)
        return n_prompts * new / (time.perf_counter() - t0)

    def spec() -> float:
        stats.clear()
        t0 = time.perf_counter()
        for p in prompts:
            out, s = speculative_generate(model, p, new, proposer=NgramProposer(), k=k)
            stats.append(s)
        return n_prompts * new / (time.perf_counter() - t0)

    def forward_seconds(n_tokens: int) -> float:
        return verify_forward_seconds(model, prompts[0], n_tokens, reps=20 if quick else 100)

    engine_stats = {}

    def engine(speculative: bool, batch: int) -> float:
        """tokens/s of one Engine over all prompts, ``batch`` running at a time (no EOS: every
        request emits ``new`` tokens)."""
        eng = Engine(model, max_batch=batch, speculative=SpecConfig(NgramProposer(), k=k) if speculative else None)
        t0 = time.perf_counter()
        for p in prompts:
            eng.submit(p[0].tolist(), new)
        eng.run_until_done()
        dt = time.perf_counter() - t0
        if speculative:
            engine_stats[batch] = eng.spec_stats()
        return n_prompts * new / dt

    plain(), spec()  # warm-up
    engine(False, 1), engine(True, 1)
    res = interleaved_rounds({"plain": plain, "spec": spec}, rounds=rounds)
    eng_res = interleaved_rounds(
        {
            "plain_1": lambda: engine(False, 1),
            "spec_1": lambda: engine(True, 1),
            "plain_b": lambda: engine(False, n_prompts),
            "spec_b": lambda: engine(True, n_prompts),
        },
        rounds=rounds,
    )
    cost = interleaved_rounds({"1": lambda: forward_seconds(1), "k+1": lambda: forward_seconds(k + 1)}, rounds=rounds)
    tps = sum(s.emitted for s in stats) / sum(s.verify_steps for s in stats)
    ratios = [s / p for s, p in zip(res["spec"]["values"], res["plain"]["values"], strict=True)]
    verify_cost = cost["k+1"]["median"] / cost["1"]["median"]
    rng = f"range {min(ratios):.2f}-{max(ratios):.2f}x"

    def engine_row(batch: int, key: str) -> dict:
        r = [s / p for s, p in zip(eng_res[f"spec_{key}"]["values"], eng_res[f"plain_{key}"]["values"], strict=True)]
        st = engine_stats[batch]
        return {
            "name": f"Engine(speculative=SpecConfig(NgramProposer(), k={k})) vs plain Engine, greedy, max_batch={batch}, "
            f"{n_prompts} prompts ({threads} thread(s), {rounds} rounds, range {min(r):.2f}-{max(r):.2f}x; "
            f"{st['tokens_per_step']:.2f} tokens per row per verify step, acceptance {st['acceptance_rate']:.2f})",
            "value": eng_res[f"spec_{key}"]["median"],
            "unit": "tok/s",
            "baseline": eng_res[f"plain_{key}"]["median"],
            "ratio": sorted(r)[len(r) // 2],
            "target": "report",
            "met": None,
        }

    own = own_model_rows(prompts, new, k, rounds, threads)
    return own + [
        {
            "name": f"speculative greedy decode (prompt lookup, k={k}), reference model 1.6M, batch 1 "
            f"({threads} thread(s), {rounds} rounds, {rng})",
            "value": res["spec"]["median"],
            "unit": "tok/s",
            "baseline": res["plain"]["median"],
            "ratio": sorted(ratios)[len(ratios) // 2],
            "target": "report",
            "met": None,
        },
        {
            "name": f"tokens emitted per verify step (prompt lookup, k={k}, {n_prompts} held-out prompts)",
            "value": tps,
            "unit": "tokens",
            "baseline": 1.0,
            "ratio": tps,
            "target": "report",
            "met": None,
        },
        {
            "name": f"cost of one {k + 1}-token verify forward vs a 1-token forward (model call only, cache of "
            f"{prompt_len}): small models are overhead-bound, so verifying k + 1 tokens costs little more than 1",
            "value": cost["k+1"]["median"] * 1e3,
            "unit": "ms",
            "baseline": cost["1"]["median"] * 1e3,
            "ratio": verify_cost,
            "target": "report",
            "met": None,
        },
        engine_row(1, "1"),
        engine_row(n_prompts, "b"),
    ]


def own_model_rows(byte_prompts, new: int, k: int, rounds: int, threads: int) -> list[dict]:
    """``BENCH_SPEC_RUN=runs/my_22m python bench/speculative.py``: the same batch-1 comparison on a
    model you trained with the course's command (a run folder or an inference artefact). Where
    decode is bandwidth-bound (>= 20 M parameters) the target is >= 1.5x; the shipped 1.6 M
    reference model is overhead-bound, so its rows only report. Nothing without the variable."""
    path = os.environ.get("BENCH_SPEC_RUN")
    if not path:
        return []
    import torch

    from course_lib.export import CONFIG_FILE, load_inference, load_model_from_run
    from course_lib.generate import generate
    from course_lib.lab.measure import interleaved_rounds
    from course_lib.speculative import NgramProposer, speculative_generate

    if (Path(path) / CONFIG_FILE).is_file():  # an inference artefact
        model, tok, _ = load_inference(path)
        where = path
    else:
        model, tok, where = load_model_from_run(path)
    model.eval()
    prompts = [torch.tensor([tok.encode(bytes(p[0].tolist()).decode("utf-8", "replace"))]) for p in byte_prompts]
    stats = []

    def plain() -> float:
        t0 = time.perf_counter()
        for p in prompts:
            generate(model, p, new)
        return len(prompts) * new / (time.perf_counter() - t0)

    def spec() -> float:
        stats.clear()
        t0 = time.perf_counter()
        for p in prompts:
            stats.append(speculative_generate(model, p, new, proposer=NgramProposer(), k=k)[1])
        return len(prompts) * new / (time.perf_counter() - t0)

    plain(), spec()
    res = interleaved_rounds({"plain": plain, "spec": spec}, rounds=rounds)
    r = [a / b for a, b in zip(res["spec"]["values"], res["plain"]["values"], strict=True)]
    n = model.num_parameters()
    tps = sum(s.emitted for s in stats) / sum(s.verify_steps for s in stats)
    big = n >= 20e6
    return [
        {
            "name": f"speculative greedy decode (prompt lookup, k={k}), your model {n / 1e6:.1f}M ({where}), batch 1 "
            f"({threads} thread(s), {rounds} rounds, range {min(r):.2f}-{max(r):.2f}x; {tps:.2f} tokens per verify step)",
            "value": res["spec"]["median"],
            "unit": "tok/s",
            "baseline": res["plain"]["median"],
            "ratio": res["spec"]["median"] / res["plain"]["median"],
            "target": ">= 1.5x" if big else "report",
            "met": (res["spec"]["median"] / res["plain"]["median"] >= 1.5) if big else None,
        }
    ]


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402  (same folder)

    print_rows(run(quick_mode()))
