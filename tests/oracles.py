"""Expensive test oracles, computed once per test run and shared.

Several tests need the same expensive result: the grader proof, the learner-steps test (which
runs the integrity suite again inside a throwaway copy) and the progress test all run every
grader against the committed stubs and the reference solutions. Each such result is stored
under a key made from the *content* of everything it depends on (files hashed byte by byte, plus
the arguments), in one folder per `make test` run:

    $COURSE_ORACLE_CACHE   created by the root conftest.py at the start of a run (the xdist
                           controller, or the only process), inherited by every xdist worker and
                           every pytest subprocess a test starts, removed at the end of the run.

A result is therefore never reused across runs, never reused when an input changed (a changed
file is a different key), and computed once even when two workers ask at the same moment (a
lock file per key). Without $COURSE_ORACLE_CACHE (a test file run on its own by a tool that
bypasses the root conftest) everything is simply computed.

Use it for a result that is (1) expensive, (2) a pure function of files and arguments, and (3)
needed by more than one test:

    from oracles import shared_file
    xml = shared_file("graders", [course_dir, ROOT / "course_lib"], ["solutions"],
                      lambda out: run_pytest(..., junitxml=out))
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

CACHE_ENV = "COURSE_ORACLE_CACHE"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", "runs", ".git"}


def cache_dir() -> Path | None:
    raw = os.environ.get(CACHE_ENV, "")
    return Path(raw) if raw and Path(raw).is_dir() else None


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".pyc"):
                yield Path(dirpath) / name


def content_key(name: str, paths: Iterable[Path], args: Iterable[str] = ()) -> str:
    """sha256 over the relative names and bytes of every file under `paths`, plus `args` and the
    interpreter (a different venv is a different oracle)."""
    h = hashlib.sha256()
    for part in (name, sys.executable, *map(str, args)):
        h.update(part.encode() + b"\0")
    for i, root in enumerate(paths):  # by position: the same files under another folder match
        root = Path(root)
        h.update(f"root {i}\0".encode())
        if not root.exists():
            h.update(b"missing\0")
            continue
        for f in _files(root):
            h.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return f"{name}-{h.hexdigest()[:24]}"


def shared_file(name: str, paths: Iterable[Path], args: Iterable[str], compute: Callable[[Path], None]) -> Path:
    """The file `compute(out)` writes to `out`, computed once per run for these inputs.

    `compute` must write `out` (or nothing, when it failed: then it is not stored and the next
    caller computes again). Returns the stored file, or a fresh one when no cache is active."""
    root = cache_dir()
    if root is None:
        out = Path(tempfile.mkdtemp(prefix=f"oracle-{name}-")) / "result"
        compute(out)
        return out
    key = content_key(name, paths, args)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first one's result
        if not final.exists():
            tmp = root / f"{key}.part"
            if tmp.exists():
                tmp.unlink()
            compute(tmp)
            if tmp.exists():
                os.replace(tmp, final)
        return final if final.exists() else root / f"{key}.part"


def start_run() -> str | None:
    """Create this run's cache folder (called once, by the process that owns the run)."""
    if cache_dir() is not None:  # an outer run (a test that runs pytest) already has one
        return None
    path = tempfile.mkdtemp(prefix="course-oracles-")
    os.environ[CACHE_ENV] = path
    return path


def end_run(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(CACHE_ENV, None)
