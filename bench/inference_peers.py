#!/usr/bin/env python3
"""course_lib's decode against its peers, all in one process on the same weights: HF
``LlamaForCausalLM.generate`` (eager) on course_lib's own HF export, course_lib eager and compiled
(static cache + torch.compile) against HF eager and HF static cache + torch.compile, and weight-only int8/int4 on packed kernels and
``quantize_dynamic`` against fp32. The speed model is ``measure.speed_config()`` (22.3 M
parameters, random init: speed does not depend on what the weights learned; 2.8 M in quick mode).

Threads are pinned (``BENCH_THREADS``, default 1) and printed. Candidates run in turn, round after
round (interleaved); each row gives the ratio of medians and, in its name, the range of the
per-round ratios, so a loaded machine shows as a wide range rather than a wrong number.

Every decode row carries its MBU: the bytes a decode step must read (``roofline.decode_bytes_per_step``:
weights at their storage width + the KV cache at the mean context) times the steps per second, over
the GEMV bandwidth probed at the start of this run (``roofline.bandwidth_probe``, same threads).
The generate rows' time includes the prefill, so their MBU is a lower bound.

    python bench/inference_peers.py
    COURSE_QUICK=1 python bench/inference_peers.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def _row(name, values, base_values, unit, target=None):
    """A bench row: ratio of medians, per-round ratio range in the name."""
    med, base = statistics.median(values), statistics.median(base_values)
    ratios = [v / b for v, b in zip(values, base_values, strict=True)]
    t = float(target) if target else None
    return {
        "name": f"{name} [{len(values)} rounds, ratio range {min(ratios):.2f}-{max(ratios):.2f}x]",
        "value": med,
        "unit": unit,
        "baseline": base,
        "ratio": med / base,
        "target": f">= {target}x" if target else None,
        "met": (med / base >= t) if t else None,
    }


def _with_mbu(row, tok_s, batch, cfg, context, bw, weight_bits=32, group_size=None, target=None):
    """Add the MBU of a decode figure (tokens/s over ``batch`` rows) to ``row``; with a target, say
    by how much it is missed."""
    from course_lib import roofline

    need = roofline.decode_bytes_per_step(cfg, context, batch, weight_bits, group_size)
    row["mbu"] = roofline.mbu(tok_s / batch, need, bw)
    if target is not None and row["mbu"] < target:
        row["name"] += f" (MBU target {target} missed by {target - row['mbu']:.2f}, x{target / row['mbu']:.1f})"
    return row


def _hotspots(model, prompt: int, new: int) -> str:
    """Top 3 course_lib functions (file:line name) by operator self time in a profile of one decode run."""
    from course_lib import roofline
    from course_lib.lab.measure import measure_generation

    measure_generation(model, 1, prompt, new)  # warm-up outside the profile
    with roofline.stack_profiled() as prof:
        measure_generation(model, 1, prompt, new)
    return "; ".join(f"{h['where']} {h['share']:.0%} ({h['ops']})" for h in roofline.hotspots(prof, 3))


def run(quick: bool) -> list[dict]:
    import statistics as st

    import torch
    import transformers

    from course_lib import roofline
    from course_lib.export import export_hf_llama
    from course_lib.generate import compile_available, generate, warm_up_compiled
    from course_lib.lab.measure import as_model, interleaved_rounds, measure_generation, pin_threads, speed_config
    from course_lib.quantize import dynamic_int8, quantize_model

    threads = pin_threads()
    probe = roofline.bandwidth_probe(quick=quick)
    bw = roofline.best_bandwidth(probe)
    print(
        "GEMV bandwidth probe: "
        + ", ".join(f"{p.weight_bytes / 2**20:.0f} MiB x{p.copies}: {p.gb_s:.1f} GB/s" for p in probe),
        flush=True,
    )
    torch.manual_seed(0)
    cfg = speed_config(quick, max_seq_len=256)
    model = as_model(cfg)
    rounds, prompt, new = (2, 16, 8) if quick else (3, 32, 32)
    print(f"speed model: {model.num_parameters() / 1e6:.1f}M params, prompt {prompt}, {new} new tokens", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="peers-"))
    export_hf_llama(model, tmp)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    hf_c = None  # HF's compiled peer: a second copy, forward compiled, static cache (BENCH_HF_COMPILE=0 skips it)
    if os.environ.get("BENCH_HF_COMPILE", "1") != "0" and compile_available()[0]:
        hf_c = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        hf_c.forward = torch.compile(hf_c.forward, dynamic=False)
    rows = []

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for b in (1, 8):
        ids = torch.randint(0, 256, (b, prompt), generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            want = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        same = generate(model, ids, new).tolist() == want[:, prompt:].tolist()
        cands = {
            "hf": lambda b=b, ids=ids: (
                b
                * new
                / timed(
                    lambda: hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
                )
            ),
            "ours": lambda b=b, ids=ids: b * new / timed(lambda: generate(model, ids, new)),
            "fused": lambda b=b, ids=ids: b * new / timed(lambda: generate(model, ids, new, cache="fused")),
        }
        if b == 1 and compile_available()[0]:
            warm = warm_up_compiled(model, b, prompt + new)
            print(f"compiled decode step warm-up: {warm:.1f} s", flush=True)
            cands["compiled"] = lambda b=b, ids=ids: b * new / timed(lambda: generate(model, ids, new, compile=True))
            if hf_c is not None:
                hf_kw = dict(
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                    cache_implementation="static",
                )
                try:
                    with torch.no_grad():
                        warm_hf = timed(lambda ids=ids, kw=hf_kw: hf_c.generate(ids, **kw))
                    print(f"HF static cache + torch.compile warm-up: {warm_hf:.1f} s", flush=True)
                    cands["hf_compiled"] = lambda b=b, ids=ids, kw=hf_kw: (
                        b * new / timed(lambda: hf_c.generate(ids, **kw))
                    )
                except Exception as e:  # noqa: BLE001 - a peer that does not compile here is reported, not fatal
                    print(f"HF static cache + torch.compile skipped: {type(e).__name__}: {str(e)[:200]}", flush=True)
        with torch.no_grad():
            res = interleaved_rounds(cands, rounds)
        v = {k: r["values"] for k, r in res.items()}
        ctx = prompt + new // 2
        rows.append(
            _with_mbu(
                _row(
                    f"generate tok/s vs HF generate (eager, same weights, batch {b}, tokens identical: {same})",
                    v["ours"],
                    v["hf"],
                    "tok/s",
                    1.2,
                ),
                st.median(v["ours"]),
                b,
                cfg,
                ctx,
                bw,
            )
        )
        same_fused = generate(model, ids, new, cache="fused").tolist() == want[:, prompt:].tolist()
        rows.append(
            _with_mbu(
                _row(
                    f"fused-decode generate (cache='fused': stacked qkv / gate-up) vs HF generate (eager, batch {b}, "
                    f"tokens identical: {same_fused})",
                    v["fused"],
                    v["hf"],
                    "tok/s",
                    1.3,
                ),
                st.median(v["fused"]),
                b,
                cfg,
                ctx,
                bw,
                target=0.5 if b == 1 else None,
            )
        )
        rows.append(_row(f"fused-decode generate vs generate (batch {b})", v["fused"], v["ours"], "tok/s"))
        if "compiled" in v:
            rows.append(
                _with_mbu(
                    _row(
                        "compiled static-cache generate vs HF eager generate (batch 1)",
                        v["compiled"],
                        v["hf"],
                        "tok/s",
                        1.8,
                    ),
                    st.median(v["compiled"]),
                    1,
                    cfg,
                    ctx,
                    bw,
                )
            )
        if "hf_compiled" in v:
            rows.append(
                _row(
                    "compiled static-cache generate vs HF static cache + torch.compile (batch 1)",
                    v["compiled"],
                    v["hf_compiled"],
                    "tok/s",
                )
            )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation: shown in lesson 4.2.2
        variants = {
            "fp32": model,
            "int8": quantize_model(model, "int8"),
            "int4": quantize_model(model, "int4", 64),
            "dynamic-int8": dynamic_int8(model)[0],
        }
    cands = {k: (lambda q=q: measure_generation(q, 1, prompt, new)["decode_tok_s"]) for k, q in variants.items()}
    for k in ("fp32", "int8", "int4"):  # the same weights through the fused decode step (stacked q/k/v, gate/up)
        cands[f"{k}-fused"] = lambda q=variants[k]: measure_generation(q, 1, prompt, new, cache="fused")["decode_tok_s"]
    res = interleaved_rounds(cands, rounds)
    targets = {"int8": 2.0, "int4": 1.3, "dynamic-int8": None}
    bits = {"fp32": (32, None), "int8": (8, None), "int4": (4, 64), "dynamic-int8": (8, None)}
    mbu_target = {"fp32": 0.5, "int8": 0.35, "int4": 0.25}  # issue 25
    ctx = prompt + new // 2
    fp = res["fp32"]["median"]
    need = roofline.decode_bytes_per_step(cfg, ctx, 1)
    row = _with_mbu(
        {
            "name": f"fp32 decode bytes/s (batch 1, {fp:.0f} tok/s x {need / 1e6:.1f} MB/step) vs the "
            f"GEMV probe [{rounds} rounds]",
            "value": fp * need / 1e9,
            "unit": "GB/s",
            "baseline": bw / 1e9,
            "ratio": fp * need / bw,
            "target": f"MBU >= {mbu_target['fp32']}",
        },
        fp,
        1,
        cfg,
        ctx,
        bw,
        target=mbu_target["fp32"],
    )
    row["met"] = row["mbu"] >= mbu_target["fp32"]
    rows.append(row)
    for k, t in targets.items():
        row = _with_mbu(
            _row(
                f"{k} decode tok/s vs fp32 (batch 1{', group 64' if k == 'int4' else ''})",
                res[k]["values"],
                res["fp32"]["values"],
                "tok/s",
                t,
            ),
            res[k]["median"],
            1,
            cfg,
            ctx,
            bw,
            *bits[k],
            target=mbu_target.get(k),
        )
        if k in mbu_target:
            row["target"] = f"{row['target']}, MBU >= {mbu_target[k]}"
            row["met"] = row["met"] and row["mbu"] >= mbu_target[k]
        rows.append(row)
    for k, row in zip(("fp32", "int8", "int4"), (rows[-4], rows[-3], rows[-2]), strict=True):
        if row["mbu"] < mbu_target[k]:  # a missed MBU target names where the decode's time goes
            row["name"] += f"; top 3 hotspots: {_hotspots(variants[k], prompt, new)}"
    for k in ("fp32", "int8", "int4"):
        row = _with_mbu(
            _row(
                f"{k} fused decode (cache='fused') tok/s vs fp32 (batch 1{', group 64' if k == 'int4' else ''})",
                res[f"{k}-fused"]["values"],
                res["fp32"]["values"],
                "tok/s",
                targets.get(k),
            ),
            res[f"{k}-fused"]["median"],
            1,
            cfg,
            ctx,
            bw,
            *bits[k],
            target=mbu_target[k],
        )
        row["target"] = f"{row['target'] + ', ' if row['target'] else ''}MBU >= {mbu_target[k]}"
        row["met"] = (row["met"] is not False) and row["mbu"] >= mbu_target[k]
        rows.append(row)
        if k != "fp32":
            rows.append(
                _row(
                    f"{k} fused decode vs {k} decode (batch 1)", res[f"{k}-fused"]["values"], res[k]["values"], "tok/s"
                )
            )
    for r in rows:
        r["name"] += f" ({threads} thread{'s' if threads > 1 else ''})"
    return rows


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402  (same folder)

    print_rows(run(quick_mode()))
