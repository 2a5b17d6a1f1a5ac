"""Proof that the graders grade: every exercise test FAILS on the untouched stubs and PASSES
on the reference solutions. A test that passes on a stub checks nothing.

Grades through the course's own grading (course_lib.lab.grading.run_graders: a pytest subprocess
with the per-test time limit, the run behind check() and progress()) and compares test ids and
outcomes. The stubs are the COMMITTED ones (tests/committed.py): a learner
who has solved exercises in their checkout still gets a green `make test`; their own progress is
`make progress` / `check()`.

COURSE_PROOF_ONLY=ex402_lr_schedule,ex00_rmsnorm limits the proof to those exercises.

No grader run twice: grading's per-exercise results are shared for the whole test run
(tests/oracles.py, $COURSE_ORACLE_CACHE), so the stubs graded here are the same results that
test_progress.py, 00-setup's progress() cell, the lessons' check() cells and the learner-steps
test's copy of this proof read. The run against the solutions is skipped when this pytest session
runs tests/exercises itself against the solutions (what `make test` does): those items are the
proof that the solutions pass, and here the solutions are only *collected*, to check that both
sides have the same test ids. COURSE_PROOF_SOLUTIONS=collect asks for the same from a session that
does not hold them (the learner-steps test, whose outer session does); =run forces the full run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from committed import course_copy  # noqa: E402

INTEGRITY = (
    "这是课程自带的完整性检查 (integrity check)，与你自己的练习进度无关；"
    "你的进度请用 `make progress` 或 notebook 里的 check() 查看。"
)


def only() -> list[str]:
    return [s.strip() for s in os.environ.get("COURSE_PROOF_ONLY", "").split(",") if s.strip()]


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A copy of the graders, solutions and the exercises as committed."""
    return course_copy(tmp_path_factory.mktemp("course"))


def run_graders(kind: str, tmp_path: Path, course: Path) -> dict[str, str]:
    """Return {test id: 'passed' | 'failed' | 'skipped'}, graded by the course's own grading
    (course_lib.lab.grading.run_graders: the run behind every lesson's check() and progress()).
    Its per-exercise results are shared through $COURSE_ORACLE_CACHE (tests/oracles.py), so the
    committed stubs are graded once per test run, whether the proof, progress on a fresh clone,
    00-setup's progress() cell or a lesson's check() cell asks first."""
    from course_lib.lab import grading

    names = only() or sorted(p.stem.removeprefix("test_") for p in (course / "tests" / "exercises").glob("test_ex*.py"))
    result = grading.run_graders(names, root=course, impl=kind)
    assert result.rows, f"评分没有产生任何结果 (no report)：\n{result.output[-3000:]}"
    outcome = {grading.STATUS_PASS: "passed", grading.STATUS_SKIP: "skipped"}
    return {f"tests.exercises.test_{r.exercise}::{r.test}": outcome.get(r.status, "failed") for r in result.rows}


def test_every_exercise_has_solution_and_grader(course):
    stubs = sorted(p.name for p in (course / "exercises").glob("ex*.py"))
    assert stubs, "exercises/ 里没有任何练习 (exercise) 文件"
    for name in stubs:
        assert (ROOT / "solutions" / name).is_file(), f"练习 {name} 缺少参考答案 solutions/{name}"
        assert (ROOT / "tests" / "exercises" / f"test_{name}").is_file(), (
            f"练习 {name} 缺少评分测试 (grader) tests/exercises/test_{name}"
        )
    for p in (ROOT / "solutions").glob("ex*.py"):
        assert (course / "exercises" / p.name).is_file(), f"solutions/{p.name} 没有对应的练习文件"


def collect_graders(kind: str, course: Path) -> dict[str, str]:
    """{test id: 'passed'} for the collected grader tests: their outcome is proven elsewhere."""
    targets = [f"tests/exercises/test_{n}.py" for n in only()] or ["tests/exercises"]
    env = dict(
        os.environ,
        COURSE_QUICK="1",
        COURSE_ROOT=str(course),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    env.pop("COURSE_IMPL", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        "--impl",
        kind,
        "-q",
        "--collect-only",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:nbval",
    ]
    proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"收集评分测试失败：\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = {}
    for line in proc.stdout.splitlines():
        if "::" not in line or line.startswith(" "):
            continue
        parts = line.strip().split("::")
        classname = parts[0].removesuffix(".py").replace("/", ".") + "".join("." + p for p in parts[1:-1])
        out[f"{classname}::{parts[-1]}"] = "passed"
    return out


def solutions_graded_in_session(request) -> bool:
    """True when this session itself runs the graders of tests/exercises on the solutions."""
    mode = os.environ.get("COURSE_PROOF_SOLUTIONS", "")
    if mode in ("collect", "run"):
        return mode == "collect"
    kind = request.config.getoption("--impl") or os.environ.get("COURSE_IMPL") or "solutions"
    graders = ROOT / "tests" / "exercises"
    wanted = {f"test_{n}.py" for n in only()}
    held = {Path(str(item.path)).name for item in request.session.items if Path(str(item.path)).parent == graders}
    return (
        kind == "solutions"
        and bool(held)
        and (not wanted or wanted <= held)
        and (wanted or held >= {p.name for p in graders.glob("test_ex*.py")})
    )


def test_graders_fail_on_stubs_and_pass_on_solutions(tmp_path, course, request):
    on_stubs = run_graders("exercises", tmp_path, course)
    if solutions_graded_in_session(request):
        print("\n参考答案上的评分测试 (solutions) 在本次运行的 tests/exercises 里执行；这里只核对测试名")
        on_solutions = collect_graders("solutions", course)
    else:
        on_solutions = run_graders("solutions", tmp_path, course)
    print(f"\n评分测试 (graders): {len(on_solutions)} 个")
    print(f"  stubs     (--impl exercises): {sum(v == 'failed' for v in on_stubs.values())} failed / {len(on_stubs)}")
    print(
        f"  solutions (--impl solutions): {sum(v == 'passed' for v in on_solutions.values())} passed "
        f"/ {len(on_solutions)}"
    )
    assert on_solutions, "没有收集到任何评分测试 (no grader tests collected)"
    assert set(on_stubs) == set(on_solutions), (
        "两次运行收集到的测试不同 (test ids differ): "
        f"仅 stubs: {sorted(set(on_stubs) - set(on_solutions))}, "
        f"仅 solutions: {sorted(set(on_solutions) - set(on_stubs))}"
    )
    not_failing = {t: o for t, o in on_stubs.items() if o != "failed"}
    assert not not_failing, (
        f"课程提交的练习模板 (stub) 上，这些评分测试没有失败，说明它们什么也没检查: {not_failing}\n{INTEGRITY}"
    )
    not_passing = {t: o for t, o in on_solutions.items() if o != "passed"}
    assert not not_passing, f"这些测试在参考答案 (solution) 上没有通过: {not_passing}\n{INTEGRITY}"
