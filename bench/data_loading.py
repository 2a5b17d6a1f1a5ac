"""Input-pipeline throughput (samples/s, no model) per DataLoader setting, each as a ratio
against the default (num_workers=0, same dataset) measured in the same run.

    python bench/data_loading.py            # full
    COURSE_QUICK=1 python bench/data_loading.py

Settings: streaming vs map-style (+DistributedSampler), num_workers 0/1/2, prefetch_factor 2/4,
pin_memory (only where CUDA exists), and a map-style source with 2 ms simulated storage latency
per sample (time spent waiting, like a network disk), where workers overlap the waiting.
Target (from the issue): report each setting's ratio; no speed-up is promised on a 2-core CPU.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from course_lib.config import quick_mode  # noqa: E402
from course_lib.data import load_corpus, tokenize_corpus  # noqa: E402
from course_lib.dataloading import make_loader, measure_throughput  # noqa: E402
from course_lib.lab.plotting import print_table  # noqa: E402


def settings(cuda: bool):
    out = []
    for kind in ("stream", "map"):
        out.append(dict(kind=kind, num_workers=0))
        for w in (1, 2):
            out.append(dict(kind=kind, num_workers=w, prefetch_factor=2))
        out.append(dict(kind=kind, num_workers=2, prefetch_factor=4))
        if cuda:
            out.append(dict(kind=kind, num_workers=2, prefetch_factor=2, pin_memory=True))
    out.append(dict(kind="map", num_workers=0, delay_ms=2.0))
    out.append(dict(kind="map", num_workers=2, prefetch_factor=2, delay_ms=2.0))
    return out


def run(quick: bool) -> list[dict]:
    tokens = tokenize_corpus(load_corpus("stdlib"))
    seq_len, batch = 128, 16
    n_batches = 8 if quick else 40
    cuda = torch.cuda.is_available()
    rows, base = [], {}
    for s in settings(cuda):
        s = dict(s)
        delay = s.pop("delay_ms", 0.0)
        loader = make_loader(s.pop("kind"), tokens, seq_len, batch, delay_ms=delay, **s)
        kind = loader.dataset.__class__.__name__
        r = measure_throughput(loader, n_batches=n_batches if not delay else max(4, n_batches // 4))
        name = (
            f"{'stream' if 'Streaming' in kind else 'map'} workers={s['num_workers']}"
            + (f" prefetch={s.get('prefetch_factor')}" if s.get("prefetch_factor") else "")
            + (" pin_memory" if s.get("pin_memory") else "")
            + (f" +{delay:g}ms/sample latency" if delay else "")
        )
        key = ("stream" if "Streaming" in kind else "map", delay)
        if s["num_workers"] == 0:
            base[key] = r["samples_per_s"]
        b = base[key]
        rows.append(
            {
                "name": name,
                "value": round(r["samples_per_s"], 1),
                "unit": "samples/s",
                "baseline": round(b, 1),
                "ratio": round(r["samples_per_s"] / b, 2),
                "first_batch_s": round(r["first_batch_s"], 3),
                "target": "report (no speed-up promised on CPU)",
                "met": True,
            }
        )
    return rows


if __name__ == "__main__":
    rows = run(quick_mode())
    print(f"input pipeline only, seq_len=128, batch=16, {os.cpu_count()} CPU cores, CUDA: {torch.cuda.is_available()}")
    print_table(rows, ["name", "value", "unit", "baseline", "ratio", "first_batch_s", "target", "met"])
    print("ratio = samples/s of the setting / samples/s of num_workers=0 for the same dataset, same run.")
