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
    env = dict(os.environ, COURSE_ROOT=str(root),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    cmd = [sys.executable, "-m", "course_lib.lab.grading"] if only is None else [
        sys.executable, "-c", f"from course_lib.lab.grading import progress; print(progress(show=False, only={only!r}))"]
    r = subprocess.run(cmd, cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _status(out: str, stem: str) -> str:
    line = next(l for l in out.splitlines() if l.strip().startswith(stem))
    return line.split()[1]


def test_progress_fresh_then_one_solved(tmp_path):
    _copy_course(tmp_path)
    stems = sorted(p.stem for p in (tmp_path / "exercises").glob("ex*.py"))
    out = _progress(tmp_path)
    for s in stems:
        assert _status(out, s) == "未开始", (
            f"课程提交的练习模板 (stub) {s} 应显示 未开始（这是课程自带的检查，与你自己的进度无关）：\n{out}")

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
    line = next(l for l in out.splitlines() if l.strip().startswith("ex00_rmsnorm"))
    assert "部分通过" in line or "未通过" in line, out
    assert "原因" in line and "test_eps_is_used" in line, out
