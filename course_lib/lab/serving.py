"""Serving measurements for lessons 4.2.5 and 4.2.6 and bench/: arrival traces replayed on the engine.

A Poisson arrival trace is replayed on a virtual clock (idle time is skipped, never slept), so a
trace means the same thing on a fast and a slow CPU; latency is counted from each request's arrival.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..engine import Engine, Request
from ..generate import generate
from ..kv_cache import DynamicCache
from ..speculative import NgramProposer, SpecConfig, crop


@dataclass
class Arrival:
    time: float  # seconds after the start of the trace
    prompt_ids: list[int]
    max_tokens: int


def poisson_trace(
    n: int,
    rate: float,
    prompts: Sequence[Sequence[int]],
    short: tuple[int, int] = (4, 16),
    long: tuple[int, int] = (64, 96),
    p_long: float = 0.25,
    seed: int = 0,
) -> list[Arrival]:
    """``n`` requests with exponential gaps (a Poisson process of ``rate`` requests/s).

    Answer lengths are a mix: mostly short, ``p_long`` of them long (chat traffic looks like this;
    it is also exactly what makes static batching wait on its longest row).
    """
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n, dtype=torch.float64).exponential_(rate, generator=g)
    times = torch.cumsum(gaps, 0) - gaps[0]  # the first request arrives at t = 0
    out = []
    for i in range(n):
        lo, hi = long if float(torch.rand((), generator=g)) < p_long else short
        m = int(torch.randint(lo, hi + 1, (), generator=g))
        out.append(Arrival(float(times[i]), list(prompts[int(torch.randint(len(prompts), (), generator=g))]), m))
    return out


def run_staggered(
    engine: Engine, prompts: Sequence[Sequence[int]], n: int = 24, every: int = 2, max_steps: int = 2000
) -> tuple[list[Request], list[int]]:
    """Submit ``n`` requests, one every ``every`` engine steps, and step until all are finished.

    Request ``i`` gets ``prompts[i % len(prompts)]`` (token ids) and ``max_tokens = 3 + (7 i) % 23``,
    so prompt and output lengths differ from request to request. Returns the requests and the
    running batch size after each step. The lesson's equivalence demo and the tests use this.
    """
    reqs: list[Request] = []
    running_sizes: list[int] = []
    step = 0
    while len(reqs) < n or engine.has_work:
        if len(reqs) < n and step % every == 0:
            i = len(reqs)
            reqs.append(engine.submit(list(prompts[i % len(prompts)]), 3 + (7 * i) % 23))
        engine.step()
        running_sizes.append(len(engine.running))
        step += 1
        if step >= max_steps:
            raise RuntimeError(f"run_staggered: requests still running after {max_steps} steps")
    return reqs, running_sizes


def replay_trace(engine: Engine, trace: Sequence[Arrival]) -> dict:
    """Feed ``trace`` to ``engine`` in real compute time, never sleeping.

    The clock is the time spent computing plus a virtual offset: when the engine is idle and the
    next request is in the future, the clock *jumps* to its arrival instead of waiting. A request
    arriving during a step is submitted right after that step (as a server would see it).
    Returns throughput (generated tokens / makespan) and latency percentiles: time to first token
    (TTFT, from arrival) and time per output token after the first (TPOT).
    """
    t0, offset = time.perf_counter(), 0.0

    def now() -> float:
        return time.perf_counter() - t0 + offset

    engine.clock = now
    reqs, i = [], 0
    while i < len(trace) or engine.has_work:
        while i < len(trace) and trace[i].time <= now():
            req = engine.submit(trace[i].prompt_ids, trace[i].max_tokens)
            req.t_submit = trace[i].time  # latency counts from arrival, not from submit
            reqs.append(req)
            i += 1
        if not engine.has_work:
            offset += trace[i].time - now()  # idle: jump to the next arrival
            continue
        engine.step()
    tokens = sum(len(r.output) for r in reqs)
    makespan = max(r.t_done for r in reqs) - trace[0].time
    ttft = [r.t_first - r.t_submit for r in reqs]
    tpot = [(r.t_done - r.t_first) / (len(r.output) - 1) for r in reqs if len(r.output) > 1]
    return {
        "requests": len(reqs),
        "tokens": tokens,
        "seconds": makespan,
        "tok_s": tokens / makespan,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "tpot_p50": percentile(tpot, 50),
        "tpot_p95": percentile(tpot, 95),
        "decode_steps": engine.stats["decode_steps"],
        "idle_rows": engine.stats["idle_rows"],
        "decode_rows": engine.stats["decode_rows"],
        "outputs": [r.output for r in reqs],
    }


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    return float(torch.quantile(torch.tensor(list(xs), dtype=torch.float64), q / 100))


def step_seconds(model, batch: int, context: int = 64, repeats: int = 5) -> float:
    """Median wall time of one batched decode step (used to pick arrival rates per machine)."""
    eng = Engine(model, eos_id=None, max_batch=batch)
    for _ in range(batch):
        eng.submit([65] * context, repeats + 2)
    eng.step()  # admit + prefill everything, first decode
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.decode()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def batching_experiment(
    model,
    prompts: Sequence[Sequence[int]],
    loads: Sequence[float] = (0.5, 1.0, 2.0),
    n: int = 48,
    rounds: int = 3,
    max_batch: int = 8,
    eos_id: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Static vs continuous batching on the same Poisson traces, at several offered loads.

    ``load`` is the arrival rate as a fraction of the continuous engine's capacity, estimated on
    this machine as ``max_batch / (mean answer length x one decode step)``, so the experiment
    means the same thing on a fast and a slow CPU. Rounds interleave the two policies (static
    first in even rounds, continuous first in odd ones) so a slow spell hits both. One row per
    (load, round, policy).
    """
    t_step = step_seconds(model, max_batch)
    probe = poisson_trace(1000, 1.0, prompts, seed=seed)
    mean_len = sum(a.max_tokens for a in probe) / len(probe)
    capacity = max_batch / (mean_len * t_step)  # requests/s the continuous engine can absorb
    rows = []
    for r in range(rounds):
        for load in loads:
            trace = poisson_trace(n, load * capacity, prompts, seed=seed + r)
            order = ("static", "continuous") if r % 2 == 0 else ("continuous", "static")
            for policy in order:
                eng = Engine(model, eos_id=eos_id, max_batch=max_batch, policy=policy)
                res = replay_trace(eng, trace)
                res.update(policy=policy, load=load, rate=load * capacity, round=r, step_s=t_step)
                rows.append(res)
    return rows


# --------------------------------------------------------------------------------------------
# Lesson 4.2.6: prefix caching and chunked prefill, measured
# --------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "# You are a careful Python assistant. Answer with short, correct code.\n"
    "# Keep names clear, add no prints, and never import anything unused.\n"
)


def shared_prefix_trace(
    tok,
    n: int,
    rate: float,
    prefix_len: int = 128,
    share: float = 0.8,
    answer: tuple[int, int] = (8, 24),
    seed: int = 0,
) -> list[Arrival]:
    """``n`` Poisson arrivals; a fraction ``share`` of the prompts starts with the same ``prefix_len``
    tokens (a system prompt), the rest are as long but share nothing. Each prompt ends with its own
    short question, so no two prompts are identical."""
    prefix = tok.encode(SYSTEM_PROMPT * (1 + prefix_len // len(SYSTEM_PROMPT)))[:prefix_len]
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n, dtype=torch.float64).exponential_(rate, generator=g)
    times = torch.cumsum(gaps, 0) - gaps[0]
    questions = [
        "def add(a, b):",
        "class Stack:",
        "import json\n",
        "for x in xs:",
        "with open(p) as f:",
        "def mean(xs):",
        "try:",
        "if not items:",
    ]
    out = []
    for i in range(n):
        q = tok.encode(f"{questions[i % len(questions)]} #{i}\n")
        if float(torch.rand((), generator=g)) < share:
            ids = prefix + q
        else:  # as long as a shared prompt, but its own bytes from the first one on
            own = tok.encode(f"# request {i}: " + "".join(chr(97 + (i * 7 + j) % 26) for j in range(prefix_len)))
            ids = own[:prefix_len] + q
        m = int(torch.randint(answer[0], answer[1] + 1, (), generator=g))
        out.append(Arrival(float(times[i]), ids, m))
    return out


def _service_seconds(model, trace: Sequence[Arrival], **engine_kw) -> float:
    """Seconds per request of the engine without a cache, every request arriving at once."""
    burst = [Arrival(0.0, a.prompt_ids, a.max_tokens) for a in trace]
    res = replay_trace(Engine(model, **engine_kw), burst)
    return res["seconds"] / len(burst)


def prefix_cache_experiment(
    model,
    tok,
    n: int = 40,
    rounds: int = 3,
    load: float = 0.7,
    prefix_len: int = 128,
    max_batch: int = 8,
    seed: int = 0,
) -> list[dict]:
    """Prefix cache off vs on, same traces, interleaved rounds (off first in even rounds).

    ``load`` is the arrival rate as a fraction of what the engine *without* a cache can serve on this
    machine (measured on a burst of the same requests), so both engines see the same arrivals and the
    one without a cache runs near, not past, its capacity. One row per (round, cache)."""
    kw = dict(eos_id=None, max_batch=max_batch, block_size=16)
    probe = shared_prefix_trace(tok, max(8, n // 4), 1.0, prefix_len=prefix_len, seed=seed + 99)
    rate = load / _service_seconds(model, probe, **kw)
    rows = []
    for r in range(rounds):
        trace = shared_prefix_trace(tok, n, rate, prefix_len=prefix_len, seed=seed + r)
        for cache in (False, True) if r % 2 == 0 else (True, False):
            eng = Engine(model, prefix_cache=cache, **kw)
            res = replay_trace(eng, trace)
            res.update(
                cache=cache,
                round=r,
                rate=rate,
                prefill_tokens=eng.stats["prefill_tokens"],
                cached_tokens=eng.stats["cached_tokens"],
                hit_rate=eng.prefix_cache_stats()["hit_rate"],
            )
            rows.append(res)
    return rows


def long_prompt_itl(
    model,
    prefill_chunk: int | None,
    *,
    n_streams: int = 4,
    stream_tokens: int = 96,
    long_len: int = 240,
    every: int = 8,
    n_long: int = 8,
    max_step_tokens: int = 512,
) -> dict:
    """Inter-token latency (ITL) of running streams while long prompts keep arriving.

    ``n_streams`` requests decode ``stream_tokens`` tokens each; from step 4 on, a ``long_len``-token
    prompt arrives every ``every`` engine steps (``n_long`` of them, answering 4 tokens). Every token's
    wall time is recorded by ``on_token``; the ITL samples are the gaps between consecutive tokens of
    the streams. Also returns the long prompts' time to first token, which chunking makes longer."""
    eng = Engine(
        model, eos_id=None, max_batch=n_streams + n_long, max_step_tokens=max_step_tokens, prefill_chunk=prefill_chunk
    )
    times: dict[int, list[float]] = {}

    def on_token(req: Request, tok: int) -> None:
        times.setdefault(req.id, []).append(time.perf_counter())

    streams = [eng.submit([65 + i, 66, 67], stream_tokens, on_token=on_token) for i in range(n_streams)]
    longs, step = [], 0
    while eng.has_work:
        if step >= 4 and (step - 4) % every == 0 and len(longs) < n_long:
            req = eng.submit([97 + (len(longs) + j) % 26 for j in range(long_len)], 4, on_token=on_token)
            req.t_submit = time.perf_counter()
            longs.append(req)
        eng.step()
        step += 1
    gaps = [b - a for r in streams for a, b in zip(times[r.id], times[r.id][1:], strict=False)]
    ttft = [times[r.id][0] - r.t_submit for r in longs]
    return {
        "chunk": prefill_chunk,
        "itl_p50": percentile(gaps, 50),
        "itl_p95": percentile(gaps, 95),
        "itl_max": max(gaps),
        "long_ttft_p50": percentile(ttft, 50),
        "steps": step,
        "outputs": [r.output for r in streams + longs],
    }


def chunked_prefill_experiment(model, chunk: int = 32, rounds: int = 3, **kw) -> list[dict]:
    """``long_prompt_itl`` without and with chunking, interleaved rounds (one row per round and mode)."""
    rows = []
    for r in range(rounds):
        for c in (None, chunk) if r % 2 == 0 else (chunk, None):
            res = long_prompt_itl(model, c, **kw)
            res["round"] = r
            rows.append(res)
    return rows


# --------------------------------------------------------------------------------------------
# Lesson 4.2.6: speculative decoding, measured (also bench/speculative.py)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def verify_forward_seconds(model, prompt: torch.Tensor, n_tokens: int, reps: int = 50) -> float:
    """Seconds of one model call that feeds ``n_tokens`` after a cached ``prompt`` ((1, T)): the
    verify forward of speculative decoding (``n_tokens = k + 1``) or a plain decode step (1)."""
    cache = DynamicCache()
    T = prompt.shape[1]
    model(prompt, past_key_values=cache, use_cache=True)
    ids = prompt[:, :n_tokens]
    t0 = time.perf_counter()
    for _ in range(reps):
        model(ids, past_key_values=cache, use_cache=True)
        crop(cache, T)
    return (time.perf_counter() - t0) / reps


def speculative_experiment(
    model, prompts: Sequence[torch.Tensor], new: int, k: int = 4, rounds: int = 3, reps: int = 50
) -> list[dict]:
    """Per round, interleaved (greedy, batch 1, no EOS): plain ``generate`` and
    ``generate(speculative=SpecConfig(NgramProposer(), k))`` tokens/s over ``prompts`` ((1, T) each),
    tokens emitted per verify step, and the seconds of a (k + 1)-token vs a 1-token forward."""

    def tok_s(spec) -> tuple[float, list]:
        stats = []
        t0 = time.perf_counter()
        for p in prompts:
            cfg = SpecConfig(NgramProposer(), k=k) if spec else None
            generate(model, p, new, speculative=cfg)
            stats.append(cfg.stats if cfg else None)
        return len(prompts) * new / (time.perf_counter() - t0), stats

    tok_s(False), tok_s(True)  # warm-up
    rows = []
    for r in range(rounds):
        plain, _ = tok_s(False)
        spec, stats = tok_s(True)
        one = verify_forward_seconds(model, prompts[0], 1, reps)
        many = verify_forward_seconds(model, prompts[0], k + 1, reps)
        rows.append(
            {
                "round": r,
                "plain_tok_s": plain,
                "spec_tok_s": spec,
                "tokens_per_step": sum(s.emitted for s in stats) / sum(s.verify_steps for s in stats),
                "acceptance": sum(s.accepted for s in stats) / max(1, sum(s.proposed for s in stats)),
                "forward_1_s": one,
                "forward_k1_s": many,
                "per_prompt": [s.tokens_per_step for s in stats],
            }
        )
    return rows
