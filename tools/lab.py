#!/usr/bin/env python3
"""The learner's working copies of the notebooks (`make lab`, `make refresh-notebooks`).

The stored notebooks in notebooks/ hold the outputs of a full run and belong to the course; the
learner runs and edits copies in my-notebooks/ (git-ignored), so JupyterLab's autosave never
touches the stored ones and `git status` stays clean whatever the learner does.

    python tools/lab.py prepare      # create my-notebooks/ and add the copies that are missing
    python tools/lab.py refresh      # also replace copies that differ from the course's version,
                                     # keeping the learner's copy as <name>.bak.ipynb (.bak2, ...)
    python tools/lab.py url          # the JupyterLab path of 00-setup (for --LabApp.default_url)
    python tools/lab.py banner $(LAB_ARGS)   # the line `make lab` prints, with the port LAB_ARGS asks for

my-notebooks/ sits next to notebooks/ so that relative paths behave the same in both.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "notebooks"
LAB_DIR_NAME = "my-notebooks"
FIRST = "00-setup.ipynb"


def lab_dir(root: Path = ROOT) -> Path:
    return root / LAB_DIR_NAME


def start_path() -> str:
    """The JupyterLab URL path that opens the learner's copy of 00-setup."""
    return f"/lab/tree/{LAB_DIR_NAME}/{FIRST}"


def _backup_name(copy: Path) -> Path:
    stem = copy.name.removesuffix(".ipynb")
    n = 1
    while True:
        cand = copy.with_name(f"{stem}.bak{'' if n == 1 else n}.ipynb")
        if not cand.exists():
            return cand
        n += 1


def _protect(stored: Path) -> None:
    """Make a stored notebook read-only, so JupyterLab opens it read-only and never autosaves it."""
    try:
        mode = stored.stat().st_mode
        stored.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        pass


def prepare(root: Path = ROOT, refresh: bool = False, quiet: bool = False) -> dict[str, list[str]]:
    """Add missing copies; with refresh, replace changed ones after backing the old copy up."""
    stored_dir, target = root / "notebooks", lab_dir(root)
    target.mkdir(exist_ok=True)
    done: dict[str, list[str]] = {"added": [], "replaced": [], "kept": []}
    for nb in sorted(stored_dir.glob("*.ipynb")):
        copy = target / nb.name
        if not copy.exists():
            shutil.copyfile(nb, copy)
            done["added"].append(nb.name)
        elif refresh and not filecmp.cmp(nb, copy, shallow=False):
            bak = _backup_name(copy)
            copy.rename(bak)
            shutil.copyfile(nb, copy)
            done["replaced"].append(f"{nb.name}（你的旧版本保存为 {bak.name}）")
        else:
            done["kept"].append(nb.name)
        _protect(nb)
    if not quiet:
        rel = target.relative_to(root)
        if done["added"]:
            print(f"[lab] 在 {rel}/ 新建了 {len(done['added'])} 个 notebook 副本（你的工作副本，git 不跟踪）")
        for r in done["replaced"]:
            print(f"[lab] 已更新 {r}")
        if done["kept"] and not refresh:
            print(
                f"[lab] 保留你已有的 {len(done['kept'])} 个副本；想换成课程的最新版本请运行 make refresh-notebooks "
                f"（旧副本会另存为 .bak.ipynb，不会丢）"
            )
        print(f"[lab] 从 {rel}/{FIRST} 开始；练习文件在 exercises/ 里")
    return done


DEFAULT_PORT = 8888


def lab_port(lab_args: list[str], default: int = DEFAULT_PORT) -> int:
    """The port JupyterLab is asked for in its arguments (``--port 8890``, ``--port=8890``,
    ``--ServerApp.port=8890``); ``default`` when none is given or the value is not a number."""
    flags = ("--port", "--ServerApp.port", "--NotebookApp.port")
    port = None
    for i, a in enumerate(lab_args):
        for flag in flags:
            if a == flag and i + 1 < len(lab_args):
                port = lab_args[i + 1]
            elif a.startswith(flag + "="):
                port = a.split("=", 1)[1]
    try:
        return int(port) if port is not None else default
    except ValueError:
        return default


def banner(lab_args: list[str]) -> str:
    port = lab_port(lab_args)
    return (
        f"[lab] JupyterLab 启动后，打开它下面打印的网址（形如 http://localhost:{port}{start_path()}?token=...；"
        f"端口 {port} 被占用时 JupyterLab 会换下一个空闲端口，以它打印的网址为准）"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("prepare", "refresh", "url", "banner"))
    args, rest = ap.parse_known_args(argv)
    if args.action == "url":
        print(start_path())
        return 0
    if args.action == "banner":
        print(banner(rest))
        return 0
    prepare(refresh=args.action == "refresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
