"""Progress bars for the long cells: a text bar with an ETA on stdout.

Why text, not tqdm's notebook widget: a widget bar saved in a notebook shows a frozen "0%"
without its kernel, and tqdm's text fallback goes to stderr. A text bar on stdout updates in place
in JupyterLab and a terminal (carriage returns), and tools/build_notebooks.py keeps only its final
state in the stored notebook: a finished bar with the elapsed time.

    from course_lib.lab.progress_bars import text_bar, watch_steps
    for x in text_bar(items, desc="runs"): ...
    with watch_steps(out_dir, total_steps=160, desc="train"):    # beside course_lib.lab.runner.run(...)
        result = run(cmd, out_dir)
    with live_bar(total=12, desc="grid cells") as bar:           # a long in-process loop with callbacks
        run_grid(on_cell=lambda c: (bar.write(line(c)), bar.update(1)))

A long cell shows its bar from its first second: the bar is drawn when the block starts and its
elapsed time ticks once a second even while one slow item is running.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from ..monitor import read_jsonl

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def text_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw) -> tqdm:
    """tqdm's text bar on stdout, fixed width, refreshed at most once a second."""
    opts = dict(
        total=total,
        desc=desc,
        file=sys.stdout,
        ncols=100,
        mininterval=1.0,
        ascii=False,
        bar_format=BAR_FORMAT,
        leave=True,
    )
    opts.update(kw)
    return tqdm(iterable, **opts)


def last_logged_step(out_dir: str | os.PathLike) -> int:
    """The newest optimizer step in out_dir/metrics.jsonl (0 when there is none yet)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [r["step"] for r in read_jsonl(path) if "step" in r]
    return max(steps, default=0)


@contextlib.contextmanager
def _every(period_s: float, fn: Callable[[], object]):
    """Call ``fn`` every ``period_s`` seconds from a background thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            fn()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def watch_steps(out_dir: str | os.PathLike, total_steps: int, desc: str = "train", poll_s: float = 0.5):
    """Show a bar for a training run that some blocking call drives (a subprocess helper, torchrun):

        with watch_steps(base / "run", STEPS, "reference"):
            reference = run(train_command(base / "run", ...), base / "run")

    A background thread follows out_dir/metrics.jsonl; the bar closes when the block ends.
    """
    bar = text_bar(total=total_steps, desc=desc)

    def catch_up() -> None:
        step = min(last_logged_step(out_dir), total_steps)
        if step > bar.n:
            bar.update(step - bar.n)

    try:
        with _every(poll_s, catch_up):
            yield bar
    finally:
        catch_up()
        bar.close()


@contextlib.contextmanager
def live_bar(total: int, desc: str = "", tick_s: float = 1.0):
    """A text bar drawn at once and redrawn every ``tick_s`` seconds, so the elapsed time moves
    even while one long item runs; print lines above it with ``bar.write(...)``."""
    bar = text_bar(total=total, desc=desc)
    bar.refresh()
    try:
        with _every(tick_s, bar.refresh):
            yield bar
    finally:
        bar.close()
