"""bench/gpu_check.py cannot rot: its dry run (the same items on the CPU, tiny sizes) must pass and
list every CUDA-only item it skipped; the BENCHMARKS.md section writer keeps the rest of the page."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
CUDA_ONLY = (
    "nccl",
    "compiled static cache",
    "int4 CUDA kernel",
    "bitsandbytes",
    "notebooks",
    "memory estimate",
    "GPTQ",
)


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(1500)
def test_dry_run_passes_and_lists_skipped_cuda_items(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    status = {r["name"]: r["status"] for r in results}
    assert "FAIL" not in status.values(), status
    for name, st in status.items():
        print(f"{st} {name}")
        assert p.stdout.count(f"[{st}] {name}:") == 1  # one line per item
    skipped = [n for n, s in status.items() if s == "SKIP"]
    for word in CUDA_ONLY:  # each CUDA-only item is reported as skipped, by name
        assert any(word in n for n in skipped), (word, skipped)
        assert any(word in line for line in p.stdout.splitlines() if line.startswith("[gpu-check] skipped:"))
    ran = [n for n, s in status.items() if s == "PASS"]
    for word in (
        "fp32",
        "bf16",
        "GradScaler",
        "activation checkpointing",
        "SIGKILL",
        "gloo",
        "cache vs no cache",
        "int8",
        "MBU",
        "engine",
    ):
        assert any(word in n for n in ran), (word, ran)  # the CPU half really ran


def test_without_cuda_the_plain_run_checks_nothing():
    mod = load()
    if mod.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert mod.main([]) == 0
    assert mod.main(["--require-cuda"]) == 2


def test_section_is_replaced_in_place(tmp_path):
    mod = load()
    page = tmp_path / "B.md"
    page.write_text("# Benchmarks\n\n## kv_cache\nrow\n", encoding="utf-8")
    mod.write_section(page, f"{mod.BEGIN}\n## GPU check\nfirst\n{mod.END}")
    mod.write_section(page, f"{mod.BEGIN}\n## GPU check\nsecond\n{mod.END}")
    text = page.read_text(encoding="utf-8")
    assert text.count(mod.BEGIN) == 1 and "second" in text and "first" not in text and "## kv_cache\nrow" in text


def test_benchmarks_page_keeps_the_gpu_section(tmp_path):
    mod = load()
    page = tmp_path / "B.md"
    page.write_text(f"# old\n{mod.BEGIN}\n## GPU check\nkept\n{mod.END}\n", encoding="utf-8")
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmarks_page

    assert benchmarks_page.main(["--out", str(page), "--only", "no-such-bench"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "kept" in text and "# Benchmarks" in text and "# old" not in text
