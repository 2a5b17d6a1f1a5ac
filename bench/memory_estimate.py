"""Memory estimate vs measured peak: course_lib.memory.estimate() against measure_peak() (CPU:
torch.profiler allocation events; CUDA: max_memory_allocated), 3 model sizes x fp32/bf16.

    python bench/memory_estimate.py          # COURSE_QUICK=1 for smaller batches
Target (issue 3): every row within +-10% of the measured peak.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib.config import ModelConfig, quick_mode  # noqa: E402
from course_lib.lab.plotting import print_table  # noqa: E402
from course_lib.memory import compare  # noqa: E402

SIZES = {
    "tiny (d64 L2 GQA)": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=256),
    "small (d128 L4 GQA)": ModelConfig(
        d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=352, max_seq_len=256
    ),
    "medium (d256 L6 MHA)": ModelConfig(
        d_model=256, n_layers=6, n_heads=8, n_kv_heads=8, ffn_hidden=704, max_seq_len=256
    ),
}


def table(quick: bool) -> list[dict]:
    batch, seq = (4, 64) if quick else (8, 256)
    return [compare(cfg, batch, seq, dtype, name=name) for name, cfg in SIZES.items() for dtype in ("fp32", "bf16")]


def run(quick: bool) -> list[dict]:
    return [
        {
            "name": f"memory estimate {r['model']} {r['dtype']} b{r['batch']} T{r['seq']}",
            "value": r["estimate_MiB"],
            "unit": "MiB",
            "baseline": r["measured_MiB"],
            "ratio": r["estimate_MiB"] / r["measured_MiB"],
            "target": "within +-10%",
            "met": r["within_10pct"],
        }
        for r in table(quick)
    ]


def main() -> None:
    rows = table(quick_mode())
    print_table(
        rows,
        [
            "model",
            "params",
            "batch",
            "seq",
            "dtype",
            "estimate_MiB",
            "measured_MiB",
            "error_pct",
            "within_10pct",
            "phase",
        ],
    )
    print(f"target: every row within +-10% -> {'met' if all(r['within_10pct'] for r in rows) else 'NOT met'}")


if __name__ == "__main__":
    main()
