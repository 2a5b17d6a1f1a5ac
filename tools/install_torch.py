#!/usr/bin/env python3
"""Install a torch build that fits this machine, before `pip install -e .` runs.

Why this exists: on Linux, a plain `pip install torch` downloads the CUDA build (several GB
of nvidia-* wheels) even on a machine without a GPU. So:

1. torch already importable  -> print its version, do nothing (a learner who installed a
   CUDA build "the usual way" keeps it).
2. `nvidia-smi` runs          -> `pip install torch` (the usual CUDA build from PyPI).
3. CPU only                   -> if download.pytorch.org resolves within ~3 s, install the
   CPU wheel from its CPU index; otherwise `pip install torch==<version>` (a local wheel via
   pip's find-links, or PyPI, whose macOS/Windows wheels are CPU-only anyway).

The environment variable TORCH_SPEC overrides the requirement, e.g. TORCH_SPEC="torch==2.5.1".
Run with the interpreter of the environment to install into: `.venv/bin/python tools/install_torch.py`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading

CPU_VERSION = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_INDEX_HOST = "download.pytorch.org"


def torch_version() -> str | None:
    """Version of torch importable by *this* interpreter, or None (checked in a subprocess so
    a half-installed torch cannot crash us)."""
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolves(host: str, timeout: float = 3.0) -> bool:
    """DNS lookup with a hard timeout (getaddrinfo itself has none), in a daemon thread."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def plan() -> list[str] | None:
    """The pip arguments to run, or None when torch is already there."""
    v = torch_version()
    if v is not None:
        print(f"[install_torch] torch {v} already installed; nothing to do.")
        return None
    spec = os.environ.get("TORCH_SPEC")
    if has_nvidia_gpu():
        print("[install_torch] nvidia-smi works: installing the usual (CUDA) torch build.")
        return ["install", spec or "torch"]
    spec = spec or f"torch=={CPU_VERSION}"
    if sys.platform.startswith("linux") and resolves(CPU_INDEX_HOST):
        print(f"[install_torch] no GPU: installing {spec} from the CPU-only index {CPU_INDEX}.")
        return ["install", spec, "--index-url", CPU_INDEX]
    print(f"[install_torch] no GPU: installing {spec} (local wheel or PyPI; {CPU_INDEX_HOST} not used).")
    return ["install", spec]


def main() -> int:
    args = plan()
    if args is None:
        return 0
    # -q: the learner sees one line per decision, not pip's download log (errors still show).
    cmd = [sys.executable, "-m", "pip", *args[:1], "-q", "--disable-pip-version-check", *args[1:]]
    print("[install_torch] $", " ".join(cmd), "(a few minutes the first time)", flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"[install_torch] installed torch {torch_version()}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
