"""The course as committed, whatever the learner has done to their checkout.

A learner edits `exercises/ex*.py` (that is the point) and may open and autosave a stored
notebook. The integrity tests (grader proof, progress on a fresh clone, stored notebooks) must
not turn red because of that, so they read those learner-owned files from `git HEAD`:

- `exercises/`: every file tracked in HEAD is taken from HEAD. A file that HEAD does not have
  is kept only when `solutions/` has the same name (an exercise being authored, not yet
  committed); anything else the learner added is left out.
- `notebooks/<name>.ipynb`: the HEAD version when tracked, else the file on disk.

Everything else (course_lib, graders, solutions) comes from the working tree, so an author who
changes a grader tests the change before committing it. Outside a git checkout (an unpacked
archive) the working tree is all there is, and it is used as it is.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
COURSE_FILES = ("conftest.py", "pytest.ini")
COURSE_DIRS = ("exercises", "solutions", "tests/exercises")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r if r.returncode == 0 else None


def is_git_checkout(root: Path = ROOT) -> bool:
    r = _git(root, "rev-parse", "--show-toplevel")
    return (
        r is not None
        and Path(r.stdout.decode().strip()).resolve() == root.resolve()
        and _git(root, "rev-parse", "--verify", "-q", "HEAD") is not None
    )


def head_files(prefix: str, root: Path = ROOT) -> dict[str, bytes] | None:
    """{path: bytes} of the files under `prefix` in HEAD; None outside a git checkout."""
    if not is_git_checkout(root):
        return None
    r = _git(root, "archive", "--format=tar", "HEAD", "--", prefix)
    if r is None:  # the path is not in HEAD at all
        return {}
    out = {}
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()
    return out


def committed_exercises(dst: Path, root: Path = ROOT) -> None:
    """Write exercises/ as committed (see the module docstring) into dst/exercises."""
    target = dst / "exercises"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = head_files("exercises", root)
    if files is None:
        shutil.copytree(root / "exercises", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        return
    for name, data in files.items():
        p = dst / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for p in (root / "exercises").glob("ex*.py"):  # authored but not committed yet
        if f"exercises/{p.name}" not in files and (root / "solutions" / p.name).is_file():
            shutil.copy(p, target / p.name)


def course_copy(dst: Path, root: Path = ROOT) -> Path:
    """A throwaway copy holding what the graders need, with the exercises as committed."""
    for d in COURSE_DIRS:
        if d != "exercises":
            shutil.copytree(root / d, dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in COURSE_FILES:
        shutil.copy(root / f, dst / f)
    committed_exercises(dst, root)
    return dst


def stored_notebook(path: Path, root: Path = ROOT) -> nbformat.NotebookNode:
    """The stored notebook as committed (HEAD) when tracked, else the file on disk."""
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    if is_git_checkout(root):
        r = _git(root, "show", f"HEAD:{rel}")
        if r is not None:
            return nbformat.reads(r.stdout.decode("utf-8"), as_version=4)
    return nbformat.read(path, as_version=4)


def committed_names(prefix: str, suffix: str, root: Path = ROOT) -> list[Path]:
    """Paths under `prefix` ending in `suffix` that HEAD tracks, plus untracked ones on disk."""
    on_disk = {p for p in (root / prefix).glob(f"*{suffix}")}
    r = _git(root, "ls-tree", "--name-only", "HEAD", f"{prefix}/") if is_git_checkout(root) else None
    if r is None:
        return sorted(on_disk)
    tracked = {root / line for line in r.stdout.decode().splitlines() if line.endswith(suffix)}
    return sorted(tracked | on_disk)
