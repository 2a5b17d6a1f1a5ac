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

Stored outputs are static: a progress bar's carriage-return updates are collapsed to its final
(finished) line, and outputs marked "course_static_text" (the quizzes) keep only their text.

A full-mode build records each notebook's run time in notebooks/timings.json. A lesson's
"预计时间" is written as {{run_time}} in its source and filled in from that file (to_notebook),
and the README's table of per-lesson times is generated from it (tools/lesson_times.py).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import sys
import sysconfig
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
TIMINGS = NB_DIR / "timings.json"
RUN_TIME = "{{run_time}}"
CELL_TIMEOUT = 900
KERNEL = "python3"


def load_timings(path: Path = TIMINGS) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def format_duration(seconds: float) -> str:
    """'约 40 秒' / '约 2.5 分钟': what a lesson header says."""
    if seconds < 90:
        return f"约 {max(10, round(seconds / 10) * 10)} 秒"
    return f"约 {round(seconds / 30) / 2:g} 分钟"


def run_time_text(name: str, timings: dict) -> str:
    t = timings.get(name)
    if not t:
        return "时间（尚未测量：make notebooks 会测量并填写）"
    return f"{format_duration(t['seconds'])}（构建时在 {t['cpu_cores']} 核 CPU 上实测，见 README 的「每课运行时间」）"


def fill_run_time(nb: nbformat.NotebookNode, name: str, timings: dict) -> None:
    for cell in nb.cells:
        if cell.cell_type == "markdown" and RUN_TIME in cell.source:
            cell.source = cell.source.replace(RUN_TIME, run_time_text(name, timings))


def to_notebook(src: Path, timings: dict | None = None) -> nbformat.NotebookNode:
    """The jupytext conversion of a source file, with the python3 kernelspec and the measured
    run time filled in."""
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)  # the .ipynb is not a jupytext pair; src/ is the source
    fill_run_time(nb, src.stem, load_timings() if timings is None else timings)
    return nb


def _final_lines(text: str) -> str:
    """What a terminal shows after carriage returns: per line, the text after the last \\r."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def _machine_paths() -> list[tuple[str, str]]:
    """Absolute paths of the building machine and what a reader sees instead: paths inside the
    repository become relative to it (as a learner types them from the repo root), the Python
    standard library (the stdlib corpus) becomes <python-stdlib>, the home folder ~."""
    stdlib = sysconfig.get_paths()["stdlib"]
    pairs = [
        (str(ROOT) + os.sep, ""),
        (str(ROOT), "."),
        (stdlib, "<python-stdlib>"),
        (sys.prefix, ".venv"),
        (os.path.realpath(sys.prefix), ".venv"),
        (os.path.realpath(stdlib), "<python-stdlib>"),
        (str(Path.home()) + os.sep, "~/"),
    ]
    return sorted({p for p in pairs if p[0] not in ("", os.sep)}, key=lambda p: -len(p[0]))


def _strip_machine_paths(text: str) -> str:
    for path, shown in _machine_paths():
        text = text.replace(path, shown)
    return text


def static_outputs(nb: nbformat.NotebookNode) -> None:
    """Make the outputs readable without a kernel (see the module docstring), and keep the
    building machine's absolute paths out of them."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for o in cell.outputs:
            if o.output_type == "stream" and outs and outs[-1].output_type == "stream" and outs[-1].name == o.name:
                outs[-1].text += o.text  # one stream output, as a viewer shows it
                continue
            if o.output_type == "display_data" and o.get("metadata", {}).get("course_static_text"):
                o.data = {"text/plain": o.data.get("text/plain", "")}
            elif o.output_type in (
                "display_data",
                "execute_result",
            ) and "application/vnd.jupyter.widget-view+json" in o.get("data", {}):
                # A widget needs its kernel: keep the live view, but show a reader of the stored
                # notebook a sentence instead of the widget's repr ("interactive(children=...").
                o.data["text/plain"] = (
                    "（交互控件 (widget)：需要运行中的 kernel，在 JupyterLab 里运行这个单元格即可使用）"
                )
            outs.append(o)
        for o in outs:
            if o.output_type == "stream" and "\r" in o.text:
                o.text = _final_lines(o.text)
            if o.output_type == "stream":
                o.text = _strip_machine_paths(o.text)
            elif "text/plain" in o.get("data", {}):
                o.data["text/plain"] = _strip_machine_paths(o.data["text/plain"])
        cell.outputs = outs


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def record_timing(name: str, seconds: float, path: Path = TIMINGS, load_before: float | None = None) -> dict:
    timings = load_timings(path)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    timings[name] = {
        "seconds": round(seconds, 1),
        "cpu_cores": cores,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "source": "make notebooks",
        "load_before": load_before,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(timings.items())), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return timings


def find_sources(patterns: list[str]) -> list[Path]:
    sources = sorted(SRC_DIR.glob("*.py"))
    if not patterns:
        return sources
    picked = []
    for pat in patterns:
        pat = Path(pat).name.removesuffix(".py").removesuffix(".ipynb")
        hits = [s for s in sources if fnmatch.fnmatch(s.stem, pat)]
        if not hits:
            sys.exit(
                f"build_notebooks: no source matches {pat!r} in {SRC_DIR} (known: {', '.join(s.stem for s in sources)})"
            )
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
        client = NotebookClient(
            nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL, resources={"metadata": {"path": str(NB_DIR)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build(src: Path, quick: bool, out_dir: Path) -> Path:
    nb = to_notebook(src)
    target = out_dir / f"{src.stem}.ipynb"
    load = _load_average()
    if not quick and load is not None and load > 0.5:
        print(
            f"  note: load average {load:.1f} before {src.name}: its recorded run time includes "
            f"other programs' load (build on an idle machine for the lesson headers)",
            flush=True,
        )
    t0 = time.perf_counter()
    try:
        execute(nb, quick)
    except CellExecutionError as e:
        idx = next((i for i, _ in error_cells(nb)), None)
        where = f"cell {idx}" if idx is not None else "a cell"
        src_line = nb.cells[idx].source.splitlines()[:3] if idx is not None else []
        raise SystemExit(
            f"\nbuild_notebooks: {src.name}: {where} failed; {target} NOT written.\n"
            f"  cell starts: {src_line}\n{str(e)[-3000:]}"
        ) from None
    seconds = time.perf_counter() - t0
    errs = error_cells(nb)
    if errs:
        raise SystemExit(f"build_notebooks: {src.name}: error outputs in cells {errs}; not written")
    static_outputs(nb)
    if not quick:  # the run time of this build goes into the file and into the header it fills
        timings = record_timing(src.stem, seconds, load_before=None if load is None else round(load, 2))
        fresh = to_notebook(src, timings)
        for cell, new in zip(nb.cells, fresh.cells, strict=True):
            if cell.cell_type == "markdown":
                cell.source = new.source
    nbformat.validate(nb)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)
    print(f"  {src.name} -> {target}  ({seconds:.1f}s, {'quick' if quick else 'full'} mode)", flush=True)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names or globs, e.g. 00-setup '4.0.*'")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="execute with COURSE_QUICK=1 into a temporary directory (a fast local "
        "check; the stored notebooks are not touched)",
    )
    args = ap.parse_args(argv)
    sources = find_sources(args.names)
    if not sources:
        print(f"build_notebooks: no sources in {SRC_DIR}")
        return 1
    out_dir = Path(tempfile.mkdtemp(prefix="nb-quick-")) if args.quick else NB_DIR
    print(f"build_notebooks: {len(sources)} notebook(s) -> {out_dir}")
    for src in sources:
        build(src, args.quick, out_dir)
    if not args.quick:  # the README's time table follows notebooks/timings.json
        import lesson_times  # here: lesson_times imports this module

        lesson_times.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
