"""Experiment trackers as trainer callbacks: Weights & Biases (wandb) and SwanLab, beside TensorBoard.

``Trainer(..., callbacks=[WandbTracker(mode="offline")])`` or ``SwanLabTracker(mode="offline")``
(also ``python -m course_lib.train --tracker wandb`` / ``--tracker swanlab``). Each logs, on every
``log_interval``-th optimizer step and on the last one, the same figures as the console line and
TensorBoard: ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s`` (and
``eval/loss`` when an evaluation ran), against ``train/step``, the trainer's optimizer step.

A resumed run continues the same tracker run: the run id is kept in ``out_dir/trackers.json``
(written by the first run, read when ``Trainer`` resumed from a checkpoint; a fresh start,
``--no-resume``, makes a new id). Steps the killed run had logged after its last checkpoint are
logged again by the resumed run; like ``monitor.last_per_step`` for metrics.jsonl, the later
record is the one that led to the final weights. Metrics are plotted against ``train/step``
rather than the tracker's own step counter, which must only grow.

Offline by default: ``mode="offline"`` writes everything under ``out_dir`` (wandb's
``wandb/offline-run-*``, SwanLab's ``swanlog/``) and needs no account and no network; upload it
later with ``wandb sync <dir>`` / ``swanlab sync <dir>``, or pass ``mode="online"`` when logged in.
Both packages are optional: ``pip install -e ".[trackers]"``. Only rank 0 logs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .fsio import atomic_write_text

IDS_FILE = "trackers.json"
METRICS = ("loss", "lr", "grad_norm")


class TrackerUnavailable(RuntimeError):
    """The tracker's package is not installed (the message says what to install)."""


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise TrackerUnavailable(
            f'{name} is not installed; pip install -e ".[trackers]" (or pip install {name}), or drop --tracker {name}'
        ) from None


def read_run_ids(out_dir: str | os.PathLike) -> dict[str, str]:
    """``{tracker name: run id}`` stored in ``out_dir/trackers.json`` ({} if none)."""
    path = Path(out_dir) / IDS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_run_id(out_dir: str | os.PathLike, name: str, run_id: str) -> None:
    path = Path(out_dir) / IDS_FILE
    ids = read_run_ids(out_dir)
    ids[name] = run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ids, indent=2) + "\n")


class TrackerCallback(Callback):
    """What both trackers share: run id across resumes, which figures, when, rank 0 only.

    Subclasses implement ``_start(run_id, resuming, config)``, ``_log(values, step)`` and
    ``_finish()``."""

    name = "tracker"

    def __init__(
        self,
        project: str = "course-stage4",
        run_name: str | None = None,
        mode: str = "offline",
        log_dir: str | os.PathLike | None = None,
    ) -> None:
        self.project, self.run_name, self.mode = project, run_name, mode
        self.log_dir = log_dir
        self.run_id: str | None = None
        self.resumed = False
        self.active = False
        self._t_last: float | None = None
        self._tokens = 0

    # ---- the callback ---------------------------------------------------------------------
    def on_train_start(self, trainer: Any) -> None:
        if not getattr(trainer, "is_main", True):
            return
        out_dir = Path(trainer.cfg.out_dir)
        if self.log_dir is None:
            self.log_dir = out_dir
        known = read_run_ids(out_dir).get(self.name)
        # continue the run only when the trainer continued one; a fresh start gets a new run
        self.resumed = known is not None and getattr(trainer, "resumed_from", None) is not None
        self.run_id = known if self.resumed else self.new_id()
        config = {"train": trainer.cfg.to_dict()}
        model_cfg = getattr(trainer, "model_cfg", None)
        if model_cfg is not None and hasattr(model_cfg, "to_dict"):
            config["model"] = model_cfg.to_dict()
        self._start(self.run_id, self.resumed, config)
        write_run_id(out_dir, self.name, self.run_id)
        self.active = True
        self._t_last, self._tokens = time.perf_counter(), 0

    def on_step_end(self, trainer: Any, metrics: dict) -> None:
        if not self.active:
            return
        self._tokens += int(trainer.tokens_per_step)
        step = int(metrics["step"])
        interval = max(1, int(getattr(trainer.cfg, "log_interval", 1)))
        if step % interval and step != trainer.cfg.max_steps and metrics.get("eval_loss") is None:
            return
        now = time.perf_counter()
        values = {f"train/{k}": float(metrics[k]) for k in METRICS if metrics.get(k) is not None}
        values["train/tokens_per_s"] = self._tokens / max(1e-9, now - self._t_last)
        values["train/step"] = step
        if metrics.get("eval_loss") is not None:
            values["eval/loss"] = float(metrics["eval_loss"])
        self._t_last, self._tokens = now, 0
        self._log(values, step)

    def on_train_end(self, trainer: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.active:
            self.active = False
            self._finish()

    # ---- per tracker ----------------------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(4) + time.strftime("%m%d%H%M", time.gmtime())

    def _start(self, run_id: str, resuming: bool, config: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log(self, values: dict, step: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _PackageTracker(TrackerCallback):
    """A tracker backed by the package called ``name``: ``self.lib``, imported when the tracker is
    made (a missing package is one clear line then, not a failure mid-run); ``self.run`` its run."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.lib = _import(self.name)
        self.run = None


class WandbTracker(_PackageTracker):
    """Weights & Biases. ``mode``: ``offline`` (default: files under ``out_dir/wandb``, no account),
    ``online`` (after ``wandb login``) or ``disabled``. The run id is wandb's ``id``; a resumed
    training run calls ``wandb.init(id=..., resume="allow")``, so ``wandb sync`` puts both parts
    in one run."""

    name = "wandb"

    def _start(self, run_id: str, resuming: bool, config: dict) -> None:
        wandb = self.lib
        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            id=run_id,
            resume="allow",
            mode=self.mode,
            dir=str(self.log_dir),
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        # every figure is plotted against the trainer's step (the tracker's own step must only grow,
        # and a resumed run logs again the steps between the last checkpoint and the crash)
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("eval/*", step_metric="train/step")

    def _log(self, values: dict, step: int) -> None:
        self.run.log(values)

    def _finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class SwanLabTracker(_PackageTracker):
    """SwanLab (swanlab.cn, popular with Chinese learners; minimind logs to it). ``mode``:
    ``offline`` (default: files under ``out_dir/swanlog``, upload later with ``swanlab sync``),
    ``local`` (the same files, viewed with ``swanlab watch``), ``online`` (after ``swanlab login``)
    or ``disabled``. A resumed training run calls ``swanlab.init(id=..., resume="allow")``; offline,
    each part is saved as ``swanlog/run-<time>-<id>/run-<id>.swanlab`` under the same id."""

    name = "swanlab"

    def _start(self, run_id: str, resuming: bool, config: dict) -> None:
        with _quiet():  # SwanLab prints banners with absolute paths on stdout; the trainer has its own log
            self._init(run_id, config)

    def _init(self, run_id: str, config: dict) -> None:
        self.run = self.lib.init(
            project=self.project,
            name=self.run_name,
            config=config,
            mode=self.mode,
            log_dir=str(Path(self.log_dir) / "swanlog"),
            id=run_id,
            resume="allow",
        )

    def _log(self, values: dict, step: int) -> None:
        self.run.log({k: v for k, v in values.items() if k != "train/step"}, step=step)

    def _finish(self) -> None:
        if self.run is not None:
            with _quiet():
                self.run.finish()
            self.run = None


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


TRACKERS = {"wandb": WandbTracker, "swanlab": SwanLabTracker}


def make_tracker(name: str, **kw) -> TrackerCallback:
    """``make_tracker("wandb" | "swanlab", mode="offline", ...)``; a one-line error for anything else."""
    if name not in TRACKERS:
        raise ValueError(
            f"--tracker: unknown tracker {name!r}; choose one of {sorted(TRACKERS)} "
            "(TensorBoard is always on unless --no-tensorboard)"
        )
    return TRACKERS[name](**kw)
