"""A learner's ordinary work never turns the course red (issue: the learner's own workspace).

In a throwaway git repository holding HEAD's committed files only (never this checkout's
working tree: a solved exercise here must not become "the course as committed" there), do what a
learner does over the whole course:

1. `make lab`'s preparation (working copies in my-notebooks/);
2. solve EVERY exercise in exercises/ (the reference answers), one of them deliberately wrong;
3. run every notebook copy the way the lab runs it (a kernel whose working folder is
   my-notebooks/, in quick mode) and save it, as JupyterLab's autosave does; the lessons'
   check() cells grade the learner's files; afterwards `git status` shows the learner's
   exercises and nothing else (the stored notebooks unchanged, nothing new that git would see);
4. `progress()`: every exercise 全部通过 except the wrong one, which names its failing test;
5. the integrity suite (grader proof, progress on a fresh clone, stored notebooks) in that copy:
   green.

Step 3 is one test per notebook, so the two xdist workers share the course's longest test
(`XDIST_PER_TEST`); each worker builds its own workspace once (steps 1-2, seconds). Steps 4-5
are one test in a workspace of its own. They need not follow step 3 in the same folder: the
integrity suite reads the course as committed (tests/committed.py: HEAD, plus files on disk that
git does not track), so a notebook run could turn it red only by changing what `git status`
shows, and step 3 checks exactly that after every notebook.

Shared work (tests/oracles.py): the grading results are cached per exercise and content for this
test run, so the lessons' check() cells, progress() and the integrity suite's grader runs grade
each distinct file once; the integrity suite's grader proof only collects the solutions' tests,
whose passing is proven by this run's tests/exercises (COURSE_PROOF_SOLUTIONS=collect).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from lab import LAB_DIR_NAME  # noqa: E402

XDIST_PER_TEST = True
INTEGRITY = ["tests/test_grader_proof.py", "tests/test_progress.py", "tests/test_notebook_sources.py"]
# The one deliberately wrong answer: RMSNorm without eps (an all-zero row becomes NaN).
WRONG = ("ex00_rmsnorm", "+ eps", "+ 0.0", "test_eps_is_used")
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
# A debugging aid only (CI never sets it): COURSE_LEARNER_NOTEBOOKS=00-setup.ipynb runs fewer.
if os.environ.get("COURSE_LEARNER_NOTEBOOKS"):
    NOTEBOOKS = [n for n in NOTEBOOKS if n in os.environ["COURSE_LEARNER_NOTEBOOKS"].split(",")]
needs_git = pytest.mark.skipif(
    not (ROOT / ".git").exists(), reason="不是 git 仓库 (git checkout)：没有 git status 可比"
)


def _git(cwd: Path, *args: str, text: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text, timeout=300, check=False)
    assert r.returncode == 0, f"git {' '.join(args)} 失败：{r.stderr}"
    return r.stdout


def _env(repo: Path, **extra: str) -> dict:
    env = dict(os.environ, COURSE_QUICK="1", PYTHONPATH=str(repo), COURSE_RUNS_DIR=str(repo / "runs"), **extra)
    env.pop("COURSE_IMPL", None)
    env.pop("COURSE_ROOT", None)
    return env


def _workspace(dst: Path) -> tuple[Path, list[str]]:
    """Steps 1-2: HEAD's committed files (git archive) in a fresh repository, `make lab`'s
    preparation, every exercise solved (one wrongly). Returns (repo, exercise stems)."""
    dst.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_git(ROOT, "archive", "--format=tar", "HEAD", text=False))) as tar:
        tar.extractall(dst, filter="data")
    for f in (dst / "notebooks").glob("*.ipynb"):
        f.chmod(0o644)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "-c", "user.name=course", "-c", "user.email=course@example.invalid", "commit", "-qm", "course")
    r = subprocess.run(
        [sys.executable, "tools/lab.py", "prepare"],
        cwd=dst,
        env=_env(dst),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    stems = sorted(p.stem for p in (dst / "exercises").glob("ex*.py"))
    assert stems, "exercises/ 里没有练习"
    for s in stems:
        shutil.copy(dst / "solutions" / f"{s}.py", dst / "exercises" / f"{s}.py")
    name, right, wrong, _ = WRONG
    text = (dst / "solutions" / f"{name}.py").read_text(encoding="utf-8")
    assert right in text, f"solutions/{name}.py changed: update WRONG in this test"
    (dst / "exercises" / f"{name}.py").write_text(text.replace(right, wrong), encoding="utf-8")
    return dst, stems


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> tuple[Path, list[str]]:
    """One learner's workspace per test process (each xdist worker builds its own)."""
    return _workspace(tmp_path_factory.mktemp("learner") / "course")


def _changed(repo: Path) -> list[str]:
    return sorted(line[3:] for line in _git(repo, "status", "--porcelain").splitlines())


@needs_git
def test_the_lab_prepares_a_copy_of_every_notebook(workspace):
    repo, stems = workspace
    copies = repo / LAB_DIR_NAME
    assert NOTEBOOKS and all((copies / n).is_file() for n in NOTEBOOKS), sorted(p.name for p in copies.glob("*"))
    assert _changed(repo) == sorted(f"exercises/{s}.py" for s in stems), _changed(repo)


@needs_git
def test_progress_and_the_integrity_suite_after_solving_everything(tmp_path):
    """Steps 4-5: the learner's own progress names the one wrong answer; the course's integrity
    suite, built only from committed files, stays green."""
    repo, stems = _workspace(tmp_path / "course")
    name, _, _, failing_test = WRONG
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

    after = subprocess.run(
        [sys.executable, "-m", "pytest", *INTEGRITY, "-q", "-p", "no:cacheprovider", "-p", "no:nbval"],
        cwd=repo,
        env=_env(repo, COURSE_PROOF_SOLUTIONS="collect"),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert after.returncode == 0, f"学习者做完全部练习之后，课程自带的完整性测试变红了：\n{after.stdout[-4000:]}"


@needs_git
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_lesson_run_and_saved_leaves_only_the_learners_exercises_changed(workspace, notebook, subtests, tmp_path):
    """Step 3 for one notebook: nbval runs the copy in the lab's folder (a kernel whose working
    folder is my-notebooks/; every cell free of errors, the `# NBVAL_CHECK_OUTPUT` cells equal to
    the stored outputs) and saves it; git sees only the learner's exercises (the stored notebooks
    unchanged, nothing new beside them). This is the only place `make test` runs the lessons; each
    cell is reported as a subtest."""
    repo, stems = workspace
    rel = f"{LAB_DIR_NAME}/{notebook}"
    xml = tmp_path / "cells.xml"
    # the save plugin is imported from tests/ by the pytest process only (sys.path, not PYTHONPATH,
    # so the learner's kernel sees the course as a learner's kernel does)
    args = [rel, "-p", "nbval_save", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--nbval-lax"]
    args += ["--nbval-current-env", "--nbval-cell-timeout=900", "--tb=short", f"--junitxml={xml}"]
    run = f"import sys; sys.path.insert(0, 'tests'); import pytest; sys.exit(pytest.main({args!r}))"
    r = subprocess.run(
        [sys.executable, "-c", run], cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=3600, check=False
    )
    cells = ET.parse(xml).getroot().iter("testcase") if xml.exists() else []
    for tc in cells:
        with subtests.test(msg=f"{notebook} {tc.get('name')}"):
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            if bad is not None:
                pytest.fail(
                    f"学习者运行 {rel} 的 {tc.get('name')} 出错（所有练习都已完成）：\n{(bad.text or '')[-3000:]}"
                )
    assert r.returncode == 0, f"学习者运行 {rel} 时出错（所有练习都已完成）：\n{(r.stdout + r.stderr)[-4000:]}"
    nb = nbformat.read(repo / rel, as_version=4)
    ran = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert ran, f"nbval 没有运行 {rel} 的任何单元：\n{r.stdout[-2000:]}"
    changed = _changed(repo)
    assert changed == sorted(f"exercises/{s}.py" for s in stems), (
        f"运行并保存 {rel} 之后，git status 应只显示你改过的练习文件，实际是：{changed}"
    )
