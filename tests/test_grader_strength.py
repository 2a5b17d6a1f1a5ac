"""Grader strength: every exercise's grader rejects at least one plausible wrong implementation.

tests/test_grader_proof.py shows each grader fails on the untouched stub (which only raises
NotImplementedError) and passes on the reference. That does not show it catches *wrong* code:
a grader that checks only "returns something" passes both. Here each folder under
tests/exercises/wrong/ holds mistakes a learner really makes (string-sorted steps, no /N in
gradient accumulation, a resume that forgets the scheduler or the RNG, ...), and every one of
them must fail its grader; some must also fail with a message that names the mistake.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRONG = ROOT / "tests" / "exercises" / "wrong"
# Each variant is its own pytest process with nothing shared: xdist may run them on any worker.
XDIST_PER_TEST = True
VARIANTS = sorted(p.name for p in WRONG.iterdir() if p.is_dir() and any(p.glob("ex*.py")))

# variant -> (exercise, words the failure message must contain)
MUST_NAME = {
    "no_scheduler_state": ("ex411_train_script", "scheduler"),
    "no_rng_state": ("ex411_train_script", "RNG"),
    "no_data_position": ("ex411_train_script", "数据位置"),
    "write_bytes_final": ("ex411_train_script", "检查点不是原子写入的"),
    "copy_onto_final": ("ex411_train_script", "检查点不是原子写入的"),
    "delete_before_replace": ("ex411_train_script", "旧的 checkpoint 在新的换名到位之前就被删掉了"),
    "log_overwritten": ("ex411_train_script", "恢复后日志丢了第 0–"),
    "mtime_order": ("ex411_keep_last_k", "mtime"),
    "repeated_kv_heads": ("ex423_kv_block", "n_kv_heads"),
    "eos_ignored": ("ex424_batched_generate", "eos"),
    "sum_not_mean": ("ex412_ddp_by_hand", "平均"),
    "no_release": ("ex425_scheduler", "release"),
    "early_free": ("ex426_prefix_cache", "引用计数"),
    "cross_document_attention": ("ex417_sft_collator", "跨文档"),
    "prompt_not_masked": ("ex417_sft_collator", "应为 -100"),
    "labels_not_shifted": ("ex417_sft_collator", "没有错一位"),
}


def run_variant(variant: str, tmp_path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{exercise: [(test name, outcome, failure message)]} for the graders of the exercises the
    variant folder holds, run against that folder."""
    folder = WRONG / variant
    stems = sorted(p.stem for p in folder.glob("ex*.py"))
    files = [f"tests/exercises/test_{s}.py" for s in stems]
    xml = tmp_path / f"{variant}.xml"
    env = dict(os.environ, COURSE_QUICK="1", COURSE_IMPL=str(folder.relative_to(ROOT)))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:nbval",
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert xml.exists(), f"pytest produced no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out: dict[str, list[tuple[str, str, str]]] = {s: [] for s in stems}
    for tc in ET.parse(xml).getroot().iter("testcase"):
        module = (tc.get("classname") or "").rsplit(".", 1)[-1]
        stem = module.removeprefix("test_")
        bad = tc.find("failure")
        if bad is None:
            bad = tc.find("error")
        outcome = "passed" if bad is None else bad.tag
        if tc.find("skipped") is not None:
            outcome = "skipped"
        message = "" if bad is None else (bad.get("message") or "") + "\n" + (bad.text or "")
        out.setdefault(stem, []).append((tc.get("name"), outcome, message))
    return out


def test_every_exercise_has_a_wrong_implementation():
    exercises = sorted(p.stem for p in (ROOT / "exercises").glob("ex*.py"))
    covered = {p.stem for v in VARIANTS for p in (WRONG / v).glob("ex*.py")}
    missing = [e for e in exercises if e not in covered]
    assert not missing, f"no plausible wrong implementation under tests/exercises/wrong/ for {missing}"
    orphans = sorted(covered - set(exercises))
    assert not orphans, f"wrong implementations for exercises that do not exist: {orphans}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_wrong_implementation_fails_its_grader(variant, tmp_path):
    results = run_variant(variant, tmp_path)
    for stem, rows in results.items():
        assert rows, f"{variant}/{stem}.py: its grader collected no tests"
        failing = [r for r in rows if r[1] in ("failure", "error")]
        assert failing, (
            f"tests/exercises/wrong/{variant}/{stem}.py is wrong on purpose, yet its grader "
            f"passed it: {[r[0] for r in rows]}"
        )
        not_implemented = [r for r in failing if "NotImplementedError" in r[2]]
        assert len(not_implemented) < len(failing), f"{variant}/{stem}.py failed only as 'not implemented'"
    if variant in MUST_NAME:
        stem, words = MUST_NAME[variant]
        messages = "\n".join(r[2] for r in results[stem] if r[1] in ("failure", "error"))
        assert words in messages, (
            f"{variant}/{stem}.py fails, but no message names the mistake ({words!r}):\n{messages[:2000]}"
        )
