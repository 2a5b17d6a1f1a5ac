"""Where things live: the repository root and a scratch folder for runs (git-ignored)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def repo_root() -> Path:
    """The folder holding ``course_lib/`` (works from notebooks/, tests/ and the root)."""
    return Path(__file__).resolve().parents[2]


def runs_dir(name: str, fresh: bool = False) -> Path:
    """``runs/<name>`` under the repo root (or ``$COURSE_RUNS_DIR/<name>``); ``fresh`` empties it."""
    base = Path(os.environ.get("COURSE_RUNS_DIR", repo_root() / "runs"))
    p = base / name
    if fresh and p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p
