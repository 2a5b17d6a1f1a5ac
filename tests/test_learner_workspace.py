"""A learner's ordinary work never turns the course red (issue: the learner's own workspace).

In a throwaway git repository holding HEAD's committed files only (never this checkout's
working tree: a solved exercise here must not become "the course as committed" there), do what a
learner does over the whole course:

1. `make lab`'s preparation (working copies in my-notebooks/);
2. solve EVERY exercise in exercises/ (the reference answers), one of them deliberately wrong;
3. run every notebook copy the way the lab runs it (a kernel whose working folder is
   my-notebooks/, in quick mode) and save it, as JupyterLab's autosave does; the lessons'
   check() cells grade the learner's files;
4. `progress()`: every exercise 全部通过 except the wrong one, which names its failing test;
5. the integrity suite (grader proof, progress on a fresh clone, stored notebooks) in that copy:
   green; and `git status` shows the learner's exercises and nothing else.

Shared work (tests/oracles.py): the grading results are cached per content for this test run,
so the 18 lessons' check() cells, progress() and the integrity suite's grader runs grade each
distinct set of files once; the integrity suite's grader proof only collects the solutions'
tests, whose passing is proven by this run's tests/exercises (COURSE_PROOF_SOLUTIONS=collect).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from lab import LAB_DIR_NAME  # noqa: E402

INTEGRITY = ["tests/test_grader_proof.py", "tests/test_progress.py", "tests/test_notebook_sources.py"]
# The one deliberately wrong answer: RMSNorm without eps (an all-zero row becomes NaN).
WRONG = ("ex00_rmsnorm", "+ eps", "+ 0.0", "test_eps_is_used")


def _git(cwd: Path, *args: str, text: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text, timeout=300, check=False)
    assert r.returncode == 0, f"git {' '.join(args)} 失败：{r.stderr}"
    return r.stdout


def _throwaway_clone(dst: Path) -> Path:
    """HEAD's committed files (git archive), committed in a fresh repository."""
    dst.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_git(ROOT, "archive", "--format=tar", "HEAD", text=False))) as tar:
        tar.extractall(dst, filter="data")
    for f in (dst / "notebooks").glob("*.ipynb"):
        f.chmod(0o644)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "-c", "user.name=course", "-c", "user.email=course@example.invalid", "commit", "-qm", "course")
    return dst


def _env(repo: Path, **extra: str) -> dict:
    env = dict(os.environ, COURSE_QUICK="1", PYTHONPATH=str(repo), COURSE_RUNS_DIR=str(repo / "runs"), **extra)
    env.pop("COURSE_IMPL", None)
    env.pop("COURSE_ROOT", None)
    return env


def _integrity(repo: Path, tests: list[str], **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider"]
    return subprocess.run(
        cmd,
        cwd=repo,
        env=_env(repo, COURSE_PROOF_SOLUTIONS="collect", **extra),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def _failed_files(proc: subprocess.CompletedProcess) -> set[str]:
    summary = proc.stdout.split("short test summary")[-1] if proc.returncode else ""
    return {t for t in INTEGRITY if t in summary}


def _run_notebook(path: Path, repo: Path) -> None:
    """Execute a notebook copy in its own folder (the lab's kernel), then save it in place."""
    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_env(repo))
    try:
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    except CellExecutionError as e:
        pytest.fail(f"学习者运行 {LAB_DIR_NAME}/{path.name} 时出错（所有练习都已完成）：\n{str(e)[-3000:]}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(nb, path)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="不是 git 仓库 (git checkout)：没有 git status 可比")
def test_learning_keeps_the_course_green(tmp_path):
    repo = _throwaway_clone(tmp_path / "course")
    before = _integrity(repo, ["tests/test_notebook_sources.py"])

    # 1. `make lab` prepares the learner's copies (git-ignored).
    r = subprocess.run(
        [sys.executable, "tools/lab.py", "prepare"],
        cwd=repo,
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    copies = repo / LAB_DIR_NAME
    notebooks = sorted(p.name for p in (repo / "notebooks").glob("*.ipynb"))
    # A debugging aid only (CI never sets it): COURSE_LEARNER_NOTEBOOKS=00-setup.ipynb runs fewer.
    if os.environ.get("COURSE_LEARNER_NOTEBOOKS"):
        notebooks = [n for n in notebooks if n in os.environ["COURSE_LEARNER_NOTEBOOKS"].split(",")]
    assert notebooks and all((copies / n).is_file() for n in notebooks), r.stdout

    # 2. The learner solves every exercise; one answer is wrong.
    stems = sorted(p.stem for p in (repo / "exercises").glob("ex*.py"))
    assert stems, "exercises/ 里没有练习"
    for s in stems:
        shutil.copy(repo / "solutions" / f"{s}.py", repo / "exercises" / f"{s}.py")
    name, right, wrong, failing_test = WRONG
    text = (repo / "solutions" / f"{name}.py").read_text(encoding="utf-8")
    assert right in text, f"solutions/{name}.py changed: update WRONG in this test"
    (repo / "exercises" / f"{name}.py").write_text(text.replace(right, wrong), encoding="utf-8")

    # 3. ... runs every notebook copy in the lab's folder and saves it.
    for n in notebooks:
        _run_notebook(copies / n, repo)

    # 4. Their own progress: everything passes but the wrong answer, which says why.
    p = subprocess.run(
        [sys.executable, "-c", "from course_lib.lab.grading import progress;print(progress(show=False).to_text())"],
        cwd=repo,
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    status = {
        line.split()[0]: line.split()[1]
        for line in p.stdout.splitlines()
        if line.startswith("  ex") and len(line.split()) > 1
    }
    assert set(status) == set(stems), p.stdout
    not_passing = {s: st for s, st in status.items() if s != name and st != "全部通过"}
    assert not not_passing, (
        f"参考答案 (solutions) 复制进 exercises/ 之后，这些练习没有显示 全部通过：{not_passing}\n{p.stdout}"
    )
    line = next(x for x in p.stdout.splitlines() if x.startswith(f"  {name}"))
    assert status[name] in ("部分通过", "未通过") and failing_test in line, p.stdout

    # 5. The integrity suite is green (as green as before the learner started, for the stored
    # notebooks' check), built only from committed files.
    after = _integrity(repo, INTEGRITY)
    red = _failed_files(after)
    allowed = {"tests/test_notebook_sources.py"} if before.returncode != 0 else set()
    assert after.returncode == 0 or (red and red <= allowed), (
        f"学习者做完全部练习、运行并保存了全部 notebook 副本之后，课程自带的完整性测试变红了：\n{after.stdout[-4000:]}"
    )

    # 6. git sees only the learner's exercises; the stored notebooks are unchanged.
    changed = sorted(line[3:] for line in _git(repo, "status", "--porcelain").splitlines())
    assert changed == sorted(f"exercises/{s}.py" for s in stems), (
        f"git status 应只显示你改过的练习文件，实际是：{changed}"
    )
