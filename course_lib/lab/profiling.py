"""Lesson 4.0.6's measurements: repeated timings, profile summaries, roofline points and the plot.

The counts and the probes live in ``course_lib.roofline`` (the training log and the benchmarks
use them too); this module times the course's own workloads (a training step, prefill, decode at
several batch sizes, int8/int4 decode) and puts them on the roofline of this machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from .. import roofline
from ..config import ModelConfig
from ..generate import decode_step, make_cache, prefill
from ..model import DIYModel

MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_weight_int8pack_mm",
    "aten::_weight_int4pack_mm_for_cpu",
    "quantized::linear_dynamic",
)


def time_calls(fn: Callable[[], object], n: int = 10, sync: Callable[[], None] = lambda: None) -> dict:
    """Call ``fn`` ``n`` times, timing each call alone (wall and process time). No warm-up on
    purpose: the first call is reported separately."""
    wall, proc = [], []
    for _ in range(n):
        sync()
        w0, p0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - w0)
        proc.append(time.process_time() - p0)
    rest = wall[1:]
    return {
        "first_ms": wall[0] * 1e3,
        "median_ms": statistics.median(rest) * 1e3,
        "min_ms": min(rest) * 1e3,
        "max_ms": max(rest) * 1e3,
        "wall_s": sum(rest),
        "process_s": sum(proc[1:]),
        "all_ms": [w * 1e3 for w in wall],
    }


def self_time_share(prof, ops: Sequence[str] = MATMUL_OPS) -> dict:
    """Self CPU time of the matmul operators vs everything else in a profile."""
    total = mm = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        if e.key in ops:
            mm += e.self_cpu_time_total
    return {"total_ms": total / 1e3, "matmul_ms": mm / 1e3, "matmul_share": mm / total if total else float("nan")}


@torch.no_grad()
def decode_loop(model, batch: int, prompt_len: int, steps: int, seed: int = 0):
    """A prefilled cache and a function that runs ``steps`` greedy decode steps from it (fresh copy each call)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, prompt_len), generator=g)

    def run():
        cache = make_cache("dynamic", model, batch)
        logits = prefill(model, ids, None, cache)
        for _ in range(steps):
            logits = decode_step(model, logits.argmax(-1), None, cache)
        return logits

    return run


def _point(name: str, kind: str, flops: float, nbytes: float, seconds: float, **extra) -> dict:
    return {
        "name": name,
        "kind": kind,
        "flops": flops,
        "bytes": nbytes,
        "seconds": seconds,
        "intensity": flops / nbytes,
        "achieved_flops": flops / seconds,
        "achieved_bytes_s": nbytes / seconds,
        **extra,
    }


def train_point(cfg: ModelConfig, batch: int, seq_len: int, steps: int = 3, seed: int = 0) -> dict:
    """A plain fp32 AdamW training step (forward, backward, update), median of ``steps`` after one warm-up."""
    torch.manual_seed(seed)
    model = DIYModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        model(x, targets=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    tokens = batch * seq_len
    return _point(
        f"train step (B{batch} x T{seq_len})",
        "train",
        roofline.flops_per_token(cfg, seq_len) * tokens,
        roofline.train_step_bytes(cfg),
        t,
        tokens_per_s=tokens / t,
    )


@torch.no_grad()
def prefill_point(
    model,
    batch: int,
    prompt_len: int,
    repeats: int = 3,
    weight_bits: int = 32,
    group_size: int | None = None,
    label: str = "fp32",
) -> dict:
    cfg = model.config
    ids = torch.randint(0, 256, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(repeats + 1):
        cache = make_cache("dynamic", model, batch)
        t0 = time.perf_counter()
        prefill(model, ids, None, cache)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times[1:])
    return _point(
        f"prefill {label} (B{batch} x {prompt_len})",
        "prefill",
        roofline.prefill_flops(cfg, prompt_len, batch),
        roofline.prefill_bytes(cfg, prompt_len, batch, weight_bits, group_size),
        t,
        tokens_per_s=batch * prompt_len / t,
        batch=batch,
    )


@torch.no_grad()
def decode_point(
    model,
    batch: int,
    prompt_len: int,
    steps: int,
    weight_bits: int = 32,
    group_size: int | None = None,
    label: str = "fp32",
    repeats: int = 1,
) -> dict:
    """Decode ``steps`` tokens after a prefilled prompt (best of ``repeats``); FLOPs and bytes at the mean context."""
    cfg = model.config
    ctx = prompt_len + (steps + 1) / 2
    ids = torch.randint(0, 256, (batch, prompt_len), generator=torch.Generator().manual_seed(2))
    best = math.inf
    for _ in range(repeats):
        cache = make_cache("dynamic", model, batch)
        logits = prefill(model, ids, None, cache)
        decode_step(model, logits.argmax(-1), None, cache)  # warm-up step
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = decode_step(model, logits.argmax(-1), None, cache)
        best = min(best, (time.perf_counter() - t0) / steps)
    flops = roofline.decode_flops_per_step(cfg, int(ctx), batch)
    nbytes = roofline.decode_bytes_per_step(cfg, int(ctx), batch, weight_bits, group_size)
    return _point(
        f"decode {label} B{batch}",
        "decode" if label == "fp32" else "decode-q",
        flops,
        nbytes,
        best,
        tokens_per_s=batch / best,
        batch=batch,
        label=label,
    )


def roof(intensity: float, peak: float, bandwidth: float) -> float:
    """The roofline: attainable FLOP/s at an arithmetic intensity (FLOPs per byte)."""
    return min(peak, bandwidth * intensity)


def plot_roofline(points: Sequence[dict], peak: float, bandwidth: float, title: str = "Roofline of this machine"):
    """Log-log: the two roofs (bandwidth x intensity, peak) and each measured point."""
    from .plotting import new_axes

    fig, ax = new_axes(title, "arithmetic intensity (FLOPs / byte)", "achieved FLOP/s")
    xs = [p["intensity"] for p in points]
    lo, hi = min(xs + [1.0]) / 3, max(xs + [peak / bandwidth]) * 3
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(
        grid,
        [roof(x, peak, bandwidth) for x in grid],
        "k-",
        lw=1.5,
        label=f"roof: {bandwidth / 1e9:.1f} GB/s, {peak / 1e9:.0f} GFLOP/s",
    )
    ax.axvline(peak / bandwidth, color="k", ls=":", lw=1)
    style = {
        "train": ("s", "tab:red"),
        "prefill": ("^", "tab:green"),
        "decode": ("o", "tab:blue"),
        "decode-q": ("D", "tab:purple"),
    }
    seen = set()
    for p in points:
        m, c = style[p["kind"]]
        ax.plot(
            p["intensity"], p["achieved_flops"], m, color=c, ms=7, label=p["kind"] if p["kind"] not in seen else None
        )
        seen.add(p["kind"])
        ax.annotate(
            p["name"].replace("decode ", "").replace("prefill ", "prefill "),
            (p["intensity"], p["achieved_flops"]),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(loc="lower right", fontsize=8)
    return fig, ax


def points_table(points: Sequence[dict], peak: float, bandwidth: float) -> list[dict[str, object]]:
    """One row per point: intensity, achieved GFLOP/s and GB/s, MFU, MBU, and which roof binds."""
    ridge = peak / bandwidth
    return [
        {
            "point": p["name"],
            "FLOP/B": round(p["intensity"], 2),
            "GFLOP/s": round(p["achieved_flops"] / 1e9, 2),
            "GB/s": round(p["achieved_bytes_s"] / 1e9, 2),
            "MFU": round(p["achieved_flops"] / peak, 3),
            "MBU": round(p["achieved_bytes_s"] / bandwidth, 3),
            "bound by": "memory" if p["intensity"] < ridge else "compute",
        }
        for p in points
    ]
