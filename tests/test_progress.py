"""The progress command on a fresh clone (every exercise untouched) and after solving one.

"Fresh clone" = the exercises as committed (tests/committed.py), so the test holds whatever the
learner has already solved in their own checkout.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from committed import course_copy  # noqa: E402


def _copy_course(dst: Path) -> None:
    course_copy(dst)


def _progress(root: Path, only=None) -> str:
    env = dict(
        os.environ,
        COURSE_ROOT=str(root),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    cmd = (
        [sys.executable, "-m", "course_lib.lab.grading"]
        if only is None
        else [
            sys.executable,
            "-c",
            f"from course_lib.lab.grading import progress; print(progress(show=False, only={only!r}))",
        ]
    )
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _status(out: str, stem: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(stem))
    return line.split()[1]


def test_progress_fresh_then_one_solved(tmp_path):
    _copy_course(tmp_path)
    stems = sorted(p.stem for p in (tmp_path / "exercises").glob("ex*.py"))
    out = _progress(tmp_path)
    for s in stems:
        assert _status(out, s) == "未开始", (
            f"课程提交的练习模板 (stub) {s} 应显示 未开始（这是课程自带的检查，与你自己的进度无关）：\n{out}"
        )

    # The learner solves ex00
    shutil.copy(tmp_path / "solutions" / "ex00_rmsnorm.py", tmp_path / "exercises" / "ex00_rmsnorm.py")
    out = _progress(tmp_path)
    assert _status(out, "ex00_rmsnorm") == "全部通过", out
    assert all(_status(out, s) == "未开始" for s in stems if s != "ex00_rmsnorm"), out


def test_progress_says_why_a_wrong_answer_fails(tmp_path):
    _copy_course(tmp_path)
    wrong = (tmp_path / "solutions" / "ex00_rmsnorm.py").read_text(encoding="utf-8")
    # Forget eps: the all-zero row becomes NaN.
    wrong = wrong.replace("+ eps", "+ 0.0")
    assert "+ 0.0" in wrong, "the reference solution changed: update this test's mutation"
    (tmp_path / "exercises" / "ex00_rmsnorm.py").write_text(wrong, encoding="utf-8")
    out = _progress(tmp_path, only=["ex00_rmsnorm"])
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("ex00_rmsnorm"))
    assert "部分通过" in line or "未通过" in line, out
    assert "原因" in line and "test_eps_is_used" in line, out


def test_a_skipped_test_is_shown_apart_with_the_install_command(tmp_path):
    """ex402's HF-parity test skips without `transformers` (it comes with `make install-test`):
    the learner sees 跳过 with the reason and the command, never 未通过, and the exercise whose
    other tests all pass is 全部通过."""
    from course_lib.lab import grading

    xml = tmp_path / "report.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.exercises.test_ex402_lr_schedule" name="test_warmup"/>'
        '<testcase classname="tests.exercises.test_ex402_lr_schedule" name="test_matches_hf">'
        '<skipped type="pytest.skip" message="could not import \'transformers\': '
        "No module named 'transformers'\"/></testcase>"
        '<testcase classname="tests.exercises.test_ex00_rmsnorm" name="test_shape">'
        '<failure message="AssertionError: 形状不对">trace</failure></testcase>'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    names = ["ex00_rmsnorm", "ex402_lr_schedule"]
    rows = grading._parse_junit(xml, names)
    skip = next(r for r in rows if r.test == "test_matches_hf")
    assert skip.status == grading.STATUS_SKIP == "跳过", rows
    assert "transformers" in skip.message and "make install-test" in skip.message, skip.message
    one = grading.CheckResult("4.0.2", ["ex402_lr_schedule"], [r for r in rows if r.exercise == "ex402_lr_schedule"])
    assert one.passed and one.n_failed == 0 and one.n_skipped == 1, one.to_text()
    assert "1/1 通过" in one.summary() and "1 个跳过" in one.summary() and "未通过" not in one.summary()
    assert "[跳过]" in one.to_text() and "跳过" in one._repr_html_()
    prog = grading.summarize(names, grading.CheckResult("all", names, rows))
    by_name = {r[0]: r for r in prog.rows}
    assert by_name["ex402_lr_schedule"][1:4] == ("全部通过", 1, 1), prog.to_text()
    assert "make install-test" in by_name["ex402_lr_schedule"][4], prog.to_text()
    assert by_name["ex00_rmsnorm"][1] == "未通过", prog.to_text()
    assert prog.n_skipped == 1 and "1 个测试跳过" in prog.to_text(), prog.to_text()


def test_every_lessons_check_cell_on_a_fresh_clone(tmp_path):
    """A new learner's first Run All: every lesson's check()/progress() cell, on the stubs as
    committed, runs without an error and shows no exercise passed (make test runs the whole lessons
    once, with every exercise solved: tests/test_learner_workspace.py)."""
    from committed import committed_names, stored_notebook

    _copy_course(tmp_path)
    cells = []
    for path in committed_names("notebooks", ".ipynb"):
        for cell in stored_notebook(path).cells:
            if cell.cell_type == "code" and ("check(" in cell.source or "progress(" in cell.source):
                cells.append((path.stem, cell.source))
    assert len({stem for stem, _ in cells}) >= 20, [stem for stem, _ in cells]
    script = (
        "import sys\nfrom pathlib import Path\nROOT = Path.cwd()\n"
        "from course_lib.lab.grading import CheckResult\nseen = []\n"
        + "".join(
            f"print('=== {stem}')\n"
            f"exec(compile({src!r}, {stem!r}, 'exec'))\n"
            "seen += [v for v in list(globals().values()) if isinstance(v, CheckResult) and v not in seen]\n"
            for stem, src in cells
        )
        + "assert seen and not any(c.passed for c in seen), [c.summary() for c in seen]\n"
        "print('checked', len(seen), 'results')\n"
    )
    env = dict(
        os.environ,
        COURSE_ROOT=str(tmp_path),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, f"一节课的 check() 单元在全新克隆上出错：\n{(r.stdout + r.stderr)[-4000:]}"
