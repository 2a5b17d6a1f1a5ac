#!/usr/bin/env python3
"""Which matmul kernel gets a batch-1 decode closest to the memory roof: the speed model's 57
matrices (``measure.speed_config()``: 8 layers x 7 linears + the output head, distinct weights,
together 89 MB, larger than the last-level cache, so every read is cache-cold as in a decode step; quick
mode: 29 matrices, 11 MB, which may fit in the cache) run
one after the other on one activation row, with each kernel:

* fp32 ``F.linear``;
* int8 weight-only ``torch._weight_int8pack_mm`` (bf16 activations; ``quantize.Int8Linear``);
* int8 ``quantize_dynamic`` (fbgemm: activations quantized per call, int8 x int8);
* int8 x int8 ``torch._int_mm`` with the activation row quantized by absmax (int32 accumulate);
* int4 ``_weight_int4pack_mm_for_cpu`` (groups of 64; ``quantize.Int4Linear``).

Each row: the pass's time, the GB/s of the bytes that kernel must read (its stored weights and
scales), that over the GEMV bandwidth probed in the same run (MBU), and the speed-up vs fp32.
Interleaved rounds, median and range; threads pinned (``BENCH_THREADS``, default 1).

    python bench/decode_kernels.py
    COURSE_QUICK=1 python bench/decode_kernels.py
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def _matrices(cfg):
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.ffn_hidden
    return [
        (cfg.n_heads * hd, d),
        (cfg.n_kv_heads * hd, d),
        (cfg.n_kv_heads * hd, d),
        (d, cfg.n_heads * hd),
        (f, d),
        (f, d),
        (d, f),
    ] * cfg.n_layers + [(cfg.vocab_size, d)]


def run(quick: bool) -> list[dict]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from course_lib import roofline
    from course_lib.lab.measure import interleaved_rounds, pin_threads, speed_config
    from course_lib.quantize import Int4Linear, Int8Linear, int4_kernel_available, int8_kernel_available

    threads = pin_threads()
    bw = roofline.best_bandwidth(roofline.bandwidth_probe(quick=quick))
    cfg = speed_config(quick)
    torch.manual_seed(0)
    lins = [nn.Linear(i, o, bias=False) for o, i in _matrices(cfg)]
    fp_bytes = sum(m.weight.numel() * 4 for m in lins)
    kernels = {"fp32 F.linear": ([m.weight for m in lins], fp_bytes, lambda w, x: F.linear(x, w))}
    if int8_kernel_available():
        q8 = [Int8Linear.from_linear(m) for m in lins]
        for m in q8:
            m.convert_for_runtime()
        kernels["int8 _weight_int8pack_mm (bf16 act)"] = (
            q8,
            sum(m.qweight.numel() + 2 * m.out_features for m in q8),
            lambda m, x: m(x),
        )

        def int_mm(pair, x):
            qt, scale = pair  # qt: int8 (in, out); x quantized per row by absmax
            s = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
            xq = torch.round(x / s).to(torch.int8)
            return torch._int_mm(xq, qt).float() * s * scale

        kernels["int8 x int8 torch._int_mm (act absmax)"] = (
            [(m.qweight.t().contiguous(), m.scale) for m in q8],
            sum(m.qweight.numel() + 4 * m.out_features for m in q8),
            int_mm,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation (lesson 4.2.2)
        dyn = torch.ao.quantization.quantize_dynamic(nn.ModuleList(lins), {nn.Linear}, dtype=torch.qint8)
    kernels["int8 quantize_dynamic (fbgemm)"] = (
        list(dyn),
        sum(o * i + 4 * o for o, i in _matrices(cfg)),
        lambda m, x: m(x),
    )
    if int4_kernel_available():
        q4 = [Int4Linear.from_linear(m, 64) for m in lins]
        for m in q4:
            m.convert_for_runtime()
        kernels["int4 _weight_int4pack_mm_for_cpu (g64)"] = (
            q4,
            sum(m.qweight.numel() + 4 * m.scales.numel() for m in q4),
            lambda m, x: m(x),
        )

    x = torch.randn(1, cfg.d_model)
    xf = torch.randn(1, cfg.ffn_hidden)
    shapes = _matrices(cfg)

    def timed(ws, fn, passes=3 if quick else 5):
        with torch.no_grad():
            for w, (_o, i) in zip(ws, shapes, strict=True):  # warm-up pass
                fn(w, x if i == cfg.d_model else xf)
            t0 = time.perf_counter()
            for _ in range(passes):
                for w, (_o, i) in zip(ws, shapes, strict=True):
                    fn(w, x if i == cfg.d_model else xf)
            return (time.perf_counter() - t0) / passes

    res = interleaved_rounds(
        {k: (lambda ws=ws, fn=fn: timed(ws, fn)) for k, (ws, _, fn) in kernels.items()}, rounds=3 if quick else 5
    )
    base = res["fp32 F.linear"]
    rows = []
    for k, (_, nbytes, _) in kernels.items():
        r = res[k]
        ratios = [b / v for v, b in zip(r["values"], base["values"], strict=True)]
        rows.append(
            {
                "name": f"{k}: one pass over {len(shapes)} cache-cold matrices, {nbytes / 1e6:.1f} MB "
                f"[{len(ratios)} rounds, speed-up range {min(ratios):.2f}-{max(ratios):.2f}x] "
                f"({threads} thread{'s' if threads > 1 else ''})",
                "value": r["median"] * 1e3,
                "unit": "ms",
                "baseline": base["median"] * 1e3,
                "ratio": base["median"] / r["median"],
                "mbu": nbytes / r["median"] / bw,
                "target": "report",
                "met": None,
            }
        )
    return rows


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402  (same folder)

    print_rows(run(quick_mode()))
