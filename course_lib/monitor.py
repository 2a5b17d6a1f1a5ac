"""Watching a run: step metrics to the console, a JSONL file and TensorBoard; a NaN guard.

``StepLogger.log(step, metrics)`` writes one record every ``log_interval`` steps (and always on
the last step) with loss, lr, grad-norm, tokens/s, elapsed time and ETA, and MFU when given the
training FLOPs per token and the peak FLOP/s (``course_lib.roofline``). The JSONL file is the
ground truth for plots (``read_jsonl``); TensorBoard gets the same scalars.

``check_finite`` is the NaN guard: it raises ``NonFiniteError`` on the step where the loss or
the gradient norm stops being a finite number, *before* the optimizer step, so non-finite
weights can never reach a checkpoint.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .callbacks import Callback


class NonFiniteError(FloatingPointError):
    """Loss or gradient norm became NaN/Inf; training stopped before the bad update."""


class MetricsLogError(RuntimeError):
    """The metrics log could not be appended to (e.g. a full disk). The message names the file
    and what to do; the checkpoints written so far are untouched."""


LIKELY_CAUSES = (
    "learning rate too high (lower lr, or use/extend warmup)",
    "exploding gradients (enable gradient clipping, e.g. grad_clip=1.0)",
    "fp16 overflow without GradScaler (use bf16, or fp16 with GradScaler)",
    "bad input batch (empty, wrong token ids, all targets ignored)",
)


def check_finite(step: int, loss: float | None = None, grad_norm: float | None = None) -> None:
    bad = []
    if loss is not None and not math.isfinite(loss):
        bad.append(f"loss={loss}")
    if grad_norm is not None and not math.isfinite(grad_norm):
        bad.append(f"grad_norm={grad_norm}")
    if bad:
        causes = "; ".join(LIKELY_CAUSES)
        raise NonFiniteError(
            f"non-finite value at step {step}: {', '.join(bad)}. Training stopped before the optimizer "
            f"step, so weights and checkpoints are untouched. Likely causes: {causes}."
        )


def format_seconds(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


class StepLogger:
    """Console + JSONL + TensorBoard, every ``interval`` steps. Create on rank 0 only."""

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        total_steps: int,
        interval: int = 10,
        tensorboard: bool = True,
        console: bool = True,
        jsonl_name: str = "metrics.jsonl",
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
    ) -> None:
        self.total_steps, self.interval, self.console = total_steps, interval, console
        # MFU = tokens/s x FLOPs per token / peak FLOP/s (of all devices together); off unless both given
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.out_dir = Path(out_dir) if out_dir else None
        self.jsonl_path = None
        self._jsonl = None
        self._tb = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl_path = self.out_dir / jsonl_name
            self._jsonl = self._open_log()
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))
                except Exception as e:  # tensorboard missing: say so, keep training
                    print(f"[monitor] TensorBoard disabled ({e})", file=sys.stderr)
        self._t_last = None
        self._tokens_since = 0
        self._start_step = None
        self._t_start = None
        self.records: list[dict] = []

    def _open_log(self) -> int:
        """The JSONL file, opened for appending (a resumed run continues the same log). A line
        torn by a killed run is closed with a newline, so the next record starts on its own line."""
        torn = False
        if self.jsonl_path.is_file() and self.jsonl_path.stat().st_size:
            with open(self.jsonl_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if torn:
            self._write_all(fd, b"\n")
        return fd

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _append(self, rec: dict) -> None:
        """One record as one line, unbuffered (a SIGKILL loses at most the line being written).
        A failed write (a full disk) is cut back to the last whole line and reported as a
        ``MetricsLogError`` that names the file and what to do."""
        if self._jsonl is None:
            return
        start = os.fstat(self._jsonl).st_size
        try:
            self._write_all(self._jsonl, (json.dumps(rec) + "\n").encode("utf-8"))
        except OSError as e:
            try:
                os.ftruncate(self._jsonl, start)  # no torn line left behind
            except OSError:
                pass
            raise MetricsLogError(self._write_failure(e)) from None

    def _write_failure(self, e: OSError) -> str:
        resume = (
            "then run again: training resumes from the last complete checkpoint (the checkpoints in "
            f"{self.out_dir / 'checkpoints'} are intact) and appends to this log"
        )
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"{self.jsonl_path}: disk full while appending the metrics log ({e.strerror}); make room on "
                f"that disk, or point --out-dir at a disk with space, {resume}"
            )
        return (
            f"{self.jsonl_path}: cannot append to the metrics log ({e.strerror or type(e).__name__}); check "
            f"the file, its permissions and the disk, {resume}"
        )

    def start(self, step: int) -> None:
        self._t_start = self._t_last = time.perf_counter()
        self._start_step = step

    def count_tokens(self, n: int) -> None:
        self._tokens_since += int(n)

    def should_log(self, step: int) -> bool:
        return step % self.interval == 0 or step == self.total_steps

    def log(self, step: int, metrics: dict, force: bool = False) -> dict | None:
        """Record ``metrics`` for optimizer step ``step`` (1-based count of finished steps)."""
        if self._t_start is None:
            self.start(step - 1)
        if not (force or self.should_log(step)):
            if metrics.get("eval_loss") is not None:  # an eval on a non-logging step is not lost
                self.log_eval(step, metrics["eval_loss"])
            return None
        now = time.perf_counter()
        dt = max(1e-9, now - self._t_last)
        elapsed = now - self._t_start
        done = step - self._start_step
        eta = elapsed / max(1, done) * (self.total_steps - step)
        rec = {
            "step": step,
            **{
                k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v)
                for k, v in metrics.items()
            },
            "tokens_per_s": self._tokens_since / dt,
            "elapsed_s": elapsed,
            "eta_s": eta,
            "time": time.time(),
        }
        if self.flops_per_token and self.peak_flops:
            rec["mfu"] = rec["tokens_per_s"] * self.flops_per_token / self.peak_flops
        self._t_last, self._tokens_since = now, 0
        self.records.append(rec)
        self._append(rec)
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}" if not k.startswith("eval") else k.replace("_", "/", 1), v, step)
            self._tb.flush()
        if self.console:
            parts = [f"step {step:>6d}/{self.total_steps}"]
            for k, fmt in (("loss", "{:.4f}"), ("eval_loss", "{:.4f}"), ("lr", "{:.2e}"), ("grad_norm", "{:.3f}")):
                if k in rec and rec[k] is not None:
                    parts.append(f"{k} " + fmt.format(rec[k]))
            parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
            if "mfu" in rec:
                parts.append(f"MFU {rec['mfu']:.1%}")
            parts.append(f"elapsed {format_seconds(elapsed)} eta {format_seconds(eta)}")
            print(" | ".join(parts), flush=True)
        return rec

    def log_eval(self, step: int, eval_loss: float) -> None:
        rec = {"step": step, "eval_loss": float(eval_loss), "time": time.time()}
        self.records.append(rec)
        self._append(rec)
        if self._tb is not None:
            self._tb.add_scalar("eval/loss", float(eval_loss), step)
            self._tb.flush()
        if self.console:
            print(f"step {step:>6d}/{self.total_steps} | eval_loss {eval_loss:.4f}", flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            os.close(self._jsonl)
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def last_per_step(records: Iterable[dict], key: str = "loss") -> list[dict]:
    """One record per step (the last one written), sorted by step, keeping records with ``key``.

    A resumed run appends to the same metrics.jsonl: the steps between the last checkpoint and
    the crash were logged twice (once before the kill, once after the resume). The resumed
    values are the ones that led to the final weights, and they come later in the file, so
    "last record per step wins" gives the true curve.
    """
    out: dict = {}
    for r in records:
        if key is None or key in r:
            out[r["step"]] = r
    return [out[s] for s in sorted(out)]


class ProgressBar(Callback):
    """A tqdm progress bar as a trainer callback (``Trainer(..., callbacks=[ProgressBar()], console=False)``).

    A text bar on stdout (also in Jupyter: a widget bar saved in a notebook shows a frozen "0%",
    see course_lib/lab/progress_bars.py). The bar shows the latest loss, lr and grad-norm and the ETA; it
    starts at the resumed step after a resume.
    """

    def __init__(self, desc: str = "train", leave: bool = True) -> None:
        self.desc, self.leave, self.bar = desc, leave, None

    def on_train_start(self, trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.cfg.max_steps,
            initial=trainer.step,
            desc=self.desc,
            leave=self.leave,
            file=sys.stdout,
            ncols=110,
            mininterval=1.0,
        )

    def on_step_end(self, trainer, metrics: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}", gnorm=f"{metrics['grad_norm']:.2f}", refresh=False
        )

    def on_train_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file (skips a torn last line from a killed run)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
