"""Proof that the graders grade: every exercise test FAILS on the untouched stubs and PASSES
on the reference solutions. A test that passes on a stub checks nothing.

Runs `python -m pytest tests/exercises --impl exercises|solutions` in subprocesses and
compares their JUnit XML reports.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_graders(kind: str, tmp_path: Path) -> dict[str, str]:
    """Return {test id: 'passed' | 'failed' | 'error' | 'skipped'}."""
    xml = tmp_path / f"graders-{kind}.xml"
    env = dict(os.environ, COURSE_QUICK="1")
    env.pop("COURSE_IMPL", None)
    cmd = [sys.executable, "-m", "pytest", "tests/exercises", "--impl", kind, "-q",
           "-p", "no:cacheprovider", f"--junitxml={xml}", "-o", "junit_family=xunit2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert xml.exists(), f"pytest 没有生成报告 (report)：\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    outcomes: dict[str, str] = {}
    for tc in ET.parse(xml).getroot().iter("testcase"):
        tid = f"{tc.get('classname')}::{tc.get('name')}"
        kinds = {child.tag for child in tc}
        if "failure" in kinds:
            outcomes[tid] = "failed"
        elif "error" in kinds:
            outcomes[tid] = "error"
        elif "skipped" in kinds:
            outcomes[tid] = "skipped"
        else:
            outcomes[tid] = "passed"
    return outcomes


def test_every_exercise_has_solution_and_grader():
    stubs = sorted(p.name for p in (ROOT / "exercises").glob("ex*.py"))
    assert stubs, "exercises/ 里没有任何练习 (exercise) 文件"
    for name in stubs:
        assert (ROOT / "solutions" / name).is_file(), f"练习 {name} 缺少参考答案 solutions/{name}"
        assert (ROOT / "tests" / "exercises" / f"test_{name}").is_file(), (
            f"练习 {name} 缺少评分测试 (grader) tests/exercises/test_{name}")
    for p in (ROOT / "solutions").glob("ex*.py"):
        assert (ROOT / "exercises" / p.name).is_file(), f"solutions/{p.name} 没有对应的练习文件"


def test_graders_fail_on_stubs_and_pass_on_solutions(tmp_path):
    on_stubs = run_graders("exercises", tmp_path)
    on_solutions = run_graders("solutions", tmp_path)
    print(f"\n评分测试 (graders): {len(on_solutions)} 个")
    print(f"  stubs     (--impl exercises): {sum(v == 'failed' for v in on_stubs.values())} failed "
          f"/ {len(on_stubs)}")
    print(f"  solutions (--impl solutions): {sum(v == 'passed' for v in on_solutions.values())} passed "
          f"/ {len(on_solutions)}")
    assert on_solutions, "没有收集到任何评分测试 (no grader tests collected)"
    assert set(on_stubs) == set(on_solutions), (
        "两次运行收集到的测试不同 (test ids differ): "
        f"仅 stubs: {sorted(set(on_stubs) - set(on_solutions))}, "
        f"仅 solutions: {sorted(set(on_solutions) - set(on_stubs))}")
    not_failing = {t: o for t, o in on_stubs.items() if o != "failed"}
    assert not not_failing, f"这些测试在未完成的练习 (stub) 上没有失败，说明它们什么也没检查: {not_failing}"
    not_passing = {t: o for t, o in on_solutions.items() if o != "passed"}
    assert not not_passing, f"这些测试在参考答案 (solution) 上没有通过: {not_passing}"
