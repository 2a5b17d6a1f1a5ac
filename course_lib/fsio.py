"""Durable, atomic file writes: the one copy every artefact writer uses.

A reader must see either the old file or the complete new one, never half of it: write to a
temporary file in the same folder, ``fsync`` it (the bytes reach the disk, not just the page
cache), ``os.replace`` it over the target (atomic on POSIX and Windows), then ``fsync`` the folder
so the rename itself survives a power cut. Used by checkpoint.py (training state), export.py
(safetensors + config.json) and quantize.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename/creation inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file someone else wrote (e.g. ``safetensors.save_file``) to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_bytes_durably(path: str | os.PathLike, data: bytes) -> None:
    """Write and fsync ``path`` in place (for files inside a folder that is itself renamed later)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write it inside the block. On success it is
    fsynced and renamed over ``path`` (then the folder is fsynced); on error it is removed and
    ``path`` is left as it was."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
