#!/usr/bin/env python3
"""int8 / int4 / GPTQ-int4 / torch.ao dynamic int8 vs fp32 on the shipped reference model:
file size (targets: int8 <= 0.3x, int4 <= 0.2x), decode speed, held-out perplexity (int8 within
1%). Everything is measured in the same run; CPU speed is reported as measured. Decode rows carry
their MBU against the GEMV bandwidth probed at the start of this run (course_lib.roofline).

    python bench/quantization.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import quick_mode  # noqa: E402


def run(quick: bool) -> list[dict]:
    import torch

    from course_lib import roofline
    from course_lib.lab.measure import comparison_table, pin_threads
    from course_lib.pretrained import calibration_batch, heldout_tokens, load_reference_model

    pin_threads()
    bw = roofline.best_bandwidth(roofline.bandwidth_probe(quick=quick))
    torch.manual_seed(0)
    model, _ = load_reference_model()
    new = 8 if quick else 16
    bits = {"fp32": (32, None), "dynamic-int8": (8, None), "int8": (8, None), "int4": (4, 64), "gptq-int4": (4, 64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation: shown in lesson 4.2.2
        table = comparison_table(
            model,
            heldout_tokens(),
            calibration_batch(8 if quick else 32),
            group_size=64,
            eval_batches=2 if quick else 20,
            new_tokens=new,
        )
    base = table[0]
    rows = []
    size_t = {"int8": 0.3, "int4": 0.2, "gptq-int4": 0.2}
    for r in table[1:]:
        m = r["method"]
        rows.append(
            {
                "name": f"{m} file size",
                "value": r["file_MB"],
                "unit": "MB",
                "baseline": base["file_MB"],
                "ratio": r["size_ratio"],
                "target": f"<= {size_t[m]}x" if m in size_t else None,
                "met": (r["size_ratio"] <= size_t[m]) if m in size_t else None,
            }
        )
        rows.append(
            {
                "name": f"{m} perplexity (held-out)",
                "value": r["perplexity"],
                "unit": "ppl",
                "baseline": base["perplexity"],
                "ratio": r["ppl_ratio"],
                "target": "<= 1.01x" if m == "int8" else "cost stated",
                "met": (r["ppl_ratio"] <= 1.01) if m == "int8" else None,
            }
        )
        need = roofline.decode_bytes_per_step(model.config, 64 + new // 2, 1, *bits[m])  # prompt 64 (comparison_table)
        rows.append(
            {
                "name": f"{m} decode tok/s (batch 1)",
                "value": r["decode_tok_s_b1"],
                "unit": "tok/s",
                "baseline": base["decode_tok_s_b1"],
                "ratio": r["decode_ratio_b1"],
                "mbu": roofline.mbu(r["decode_tok_s_b1"], need, bw),
                "target": None,
                "met": None,
            }
        )
    g = next(r for r in table if r["method"] == "gptq-int4")
    i4 = next(r for r in table if r["method"] == "int4")
    rows.append(
        {
            "name": "GPTQ-int4 perplexity vs round-to-nearest int4",
            "value": g["perplexity"],
            "unit": "ppl",
            "baseline": i4["perplexity"],
            "ratio": g["perplexity"] / i4["perplexity"],
            "target": "< 1x",
            "met": g["perplexity"] < i4["perplexity"],
        }
    )
    return rows


if __name__ == "__main__":
    from kv_cache import print_rows  # noqa: E402

    print_rows(run(quick_mode()))
