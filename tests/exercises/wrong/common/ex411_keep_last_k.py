"""WRONG on purpose (tests/test_grader_strength.py): sorts checkpoint folders by name (string order), not by step number."""

import re
import shutil
from pathlib import Path

_DIR_RE = re.compile(r"^step_(\d{8,})$")


def rotate_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least one checkpoint")
    items = []
    for p in Path(ckpt_dir).iterdir():
        m = _DIR_RE.match(p.name)
        if m and p.is_dir() and (p / "COMPLETE.json").exists():
            items.append((p.name, p))
    items.sort()
    removed = [p for _, p in items[: max(0, len(items) - keep_last)]]
    for p in removed:
        shutil.rmtree(p)
    return removed
