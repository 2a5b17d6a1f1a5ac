#!/usr/bin/env python3
"""Build the stored notebooks from their jupytext sources and execute them.

Sources:  notebooks/src/<name>.py   (jupytext py:percent; edit these)
Outputs:  notebooks/<name>.ipynb    (kernel python3, with the outputs of a FULL-mode run)

    python tools/build_notebooks.py                 # every source, full mode, store outputs
    python tools/build_notebooks.py 00-setup "4.0.*"   # names or globs (without .py)
    python tools/build_notebooks.py --quick         # quick mode, into a temp dir; stores nothing

Full mode runs with COURSE_QUICK removed from the environment and cwd = notebooks/. If any
cell raises, the tool stops with a non-zero exit naming the notebook and cell, and the stored
.ipynb is left untouched (a notebook with an error output is never written).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SRC_DIR = NB_DIR / "src"
CELL_TIMEOUT = 900
KERNEL = "python3"


def to_notebook(src: Path) -> nbformat.NotebookNode:
    """The jupytext conversion of a source file, with the python3 kernelspec."""
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)  # the .ipynb is not a jupytext pair; src/ is the source
    return nb


def find_sources(patterns: list[str]) -> list[Path]:
    sources = sorted(SRC_DIR.glob("*.py"))
    if not patterns:
        return sources
    picked = []
    for pat in patterns:
        pat = Path(pat).name.removesuffix(".py").removesuffix(".ipynb")
        hits = [s for s in sources if fnmatch.fnmatch(s.stem, pat)]
        if not hits:
            sys.exit(f"build_notebooks: no source matches {pat!r} in {SRC_DIR} "
                     f"(known: {', '.join(s.stem for s in sources)})")
        picked += [h for h in hits if h not in picked]
    return picked


def error_cells(nb) -> list[tuple[int, str]]:
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((i, f"{o.get('ename')}: {o.get('evalue')}"))
    return out


def execute(nb, quick: bool) -> None:
    env = dict(os.environ)
    env.pop("COURSE_QUICK", None)
    if quick:
        env["COURSE_QUICK"] = "1"
    # nbclient starts the kernel with this process's environment: swap it in for the run.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                                resources={"metadata": {"path": str(NB_DIR)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build(src: Path, quick: bool, out_dir: Path) -> Path:
    nb = to_notebook(src)
    target = out_dir / f"{src.stem}.ipynb"
    t0 = time.perf_counter()
    try:
        execute(nb, quick)
    except CellExecutionError as e:
        idx = next((i for i, _ in error_cells(nb)), None)
        where = f"cell {idx}" if idx is not None else "a cell"
        src_line = nb.cells[idx].source.splitlines()[:3] if idx is not None else []
        raise SystemExit(f"\nbuild_notebooks: {src.name}: {where} failed; {target} NOT written.\n"
                         f"  cell starts: {src_line}\n{str(e)[-3000:]}")
    errs = error_cells(nb)
    if errs:
        raise SystemExit(f"build_notebooks: {src.name}: error outputs in cells {errs}; not written")
    nbformat.validate(nb)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)
    print(f"  {src.name} -> {target}  ({time.perf_counter() - t0:.1f}s, "
          f"{'quick' if quick else 'full'} mode)", flush=True)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names or globs, e.g. 00-setup '4.0.*'")
    ap.add_argument("--quick", action="store_true",
                    help="execute with COURSE_QUICK=1 into a temporary directory (a fast local "
                         "check; the stored notebooks are not touched)")
    args = ap.parse_args(argv)
    sources = find_sources(args.names)
    if not sources:
        print(f"build_notebooks: no sources in {SRC_DIR}")
        return 1
    out_dir = Path(tempfile.mkdtemp(prefix="nb-quick-")) if args.quick else NB_DIR
    print(f"build_notebooks: {len(sources)} notebook(s) -> {out_dir}")
    for src in sources:
        build(src, args.quick, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
