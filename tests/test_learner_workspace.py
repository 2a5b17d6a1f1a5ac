"""A learner's ordinary work never turns the course red (issue: the learner's own workspace).

In a throwaway git copy of the course, do what a learner does: `make lab`'s preparation (working
copies in my-notebooks/), solve an exercise in exercises/, run a notebook copy the way the lab
runs it and save it. Then run the integrity suite (grader proof, progress on a fresh clone,
stored notebooks) in that copy and check `git status`: the stored notebooks are untouched and
the only change git sees is the learner's exercise.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from lab import LAB_DIR_NAME  # noqa: E402

INTEGRITY = ["tests/test_grader_proof.py", "tests/test_progress.py", "tests/test_notebook_sources.py"]
RUN_NOTEBOOK = "00-setup.ipynb"


def _git(cwd: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"git {' '.join(args)} 失败：{r.stderr}"
    return r.stdout


def _throwaway_clone(dst: Path) -> Path:
    """Tracked + untracked (not ignored) files of this checkout, committed in a fresh repo."""
    files = _git(ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
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
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-x"]
    return subprocess.run(cmd, cwd=repo, env=_env(repo, **extra), capture_output=True, text=True,
                          timeout=1800, check=False)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="不是 git 仓库 (git checkout)：没有 git status 可比")
def test_learning_keeps_the_course_green(tmp_path):
    repo = _throwaway_clone(tmp_path / "course")
    before = _integrity(repo, ["tests/test_notebook_sources.py"])

    # 1. `make lab` prepares the learner's copies (git-ignored).
    r = subprocess.run([sys.executable, "tools/lab.py", "prepare"], cwd=repo, env=_env(repo),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    copies = repo / LAB_DIR_NAME
    assert (copies / RUN_NOTEBOOK).is_file(), r.stdout

    # 2. The learner solves an exercise (the warm-up, plus one lesson exercise when there is one).
    stems = sorted(p.stem for p in (repo / "exercises").glob("ex*.py"))
    solved = [s for s in stems if s.startswith("ex00")][:1] + [s for s in stems if not s.startswith("ex00")][:1]
    for s in solved:
        shutil.copy(repo / "solutions" / f"{s}.py", repo / "exercises" / f"{s}.py")

    # 3. ... runs a notebook copy in the lab's folder and saves it (what JupyterLab's autosave does).
    nb = nbformat.read(copies / RUN_NOTEBOOK, as_version=4)
    saved = dict(os.environ)
    os.environ.update(_env(repo))
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(copies)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(nb, copies / RUN_NOTEBOOK)

    # 4. The integrity suite is as green as before the learner started.
    after = _integrity(repo, INTEGRITY, COURSE_PROOF_ONLY=",".join(solved))
    assert after.returncode == 0 or (
        before.returncode != 0 and "test_notebook_sources" in after.stdout.split("short test summary")[-1]
        and "test_grader_proof" not in after.stdout.split("short test summary")[-1]
        and "test_progress" not in after.stdout.split("short test summary")[-1]), (
        f"学习者做完练习、运行了 notebook 副本之后，课程自带的完整性测试变红了：\n{after.stdout[-4000:]}")
    after_nb = _integrity(repo, ["tests/test_notebook_sources.py"])
    assert after_nb.returncode == before.returncode, after_nb.stdout[-3000:]

    # 5. git sees only the learner's exercises; the stored notebooks are unchanged.
    status = _git(repo, "status", "--porcelain").splitlines()
    changed = sorted(line[3:] for line in status)
    assert changed == sorted(f"exercises/{s}.py" for s in solved), (
        f"git status 应只显示你改过的练习文件，实际是：{status}")
