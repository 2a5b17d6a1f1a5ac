"""Start real training processes from a notebook or a test, watch them, and kill them on purpose.

``train_command(out_dir, max_steps=200, grad_clip=1.0)`` builds the ``python -m course_lib.train``
command line from keyword flags (``True``/``False`` become ``--flag``/``--no-flag``);
``torchrun_train_command(2, ...)`` the same under ``torchrun --nproc_per_node=2``. ``run`` waits for a
process to finish; ``run_and_kill`` watches the run's ``metrics.jsonl`` and sends ``SIGKILL``
once a given step has been logged: no cleanup code runs, exactly like a power cut or the OOM
killer. Both return a ``RunResult`` with the exit code, the last logged step and the output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..distributed import subprocess_env, torchrun_command
from ..monitor import read_jsonl
from .paths import repo_root


@dataclass
class RunResult:
    returncode: int
    last_logged_step: int
    output: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def tail(self, n: int = 5) -> str:
        return "\n".join(self.output.strip().splitlines()[-n:])


def _flags(flags: dict) -> list[str]:
    out: list[str] = []
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [name, *map(str, value)]
        else:
            out += [name, str(value)]
    return out


def train_command(out_dir: str | os.PathLike, **flags) -> list[str]:
    return [sys.executable, "-m", "course_lib.train", "--out-dir", str(out_dir), *_flags(flags)]


def torchrun_train_command(nproc: int, out_dir: str | os.PathLike, max_restarts: int = 0, **flags) -> list[str]:
    """``torchrun --standalone --nproc-per-node=N -m course_lib.train ...`` (``--standalone``
    picks a free rendezvous port; ``course_lib.launch`` sets ``distributed.TORCHRUN_ENV``)."""
    return torchrun_command(
        ["--out-dir", str(out_dir), *_flags(flags)], nproc_per_node=nproc, max_restarts=max_restarts
    )


def _last_step(out_dir: Path) -> int:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [r["step"] for r in read_jsonl(path) if "loss" in r]
    return max(steps) if steps else 0


def run(cmd: Sequence[str], out_dir: str | os.PathLike, timeout: float = 900, env: dict | None = None) -> RunResult:
    """Run to the end (or ``timeout`` seconds) and collect the output."""
    t0 = time.perf_counter()
    r = subprocess.run(
        list(cmd), cwd=repo_root(), env=subprocess_env(env), capture_output=True, text=True, timeout=timeout
    )
    return RunResult(r.returncode, _last_step(Path(out_dir)), r.stdout + r.stderr, time.perf_counter() - t0)


def run_and_kill(
    cmd: Sequence[str],
    out_dir: str | os.PathLike,
    kill_after_step: int,
    timeout: float = 900,
    env: dict | None = None,
    poll_s: float = 0.05,
) -> RunResult:
    """Start ``cmd``; once ``metrics.jsonl`` shows ``kill_after_step``, SIGKILL the whole process
    group (torchrun and its workers too)."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    log_path = out_dir.parent / f".{out_dir.name}.log"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=repo_root(),
            env=subprocess_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if _last_step(out_dir) >= kill_after_step:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                if time.perf_counter() - t0 > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    raise TimeoutError(f"training did not reach step {kill_after_step} within {timeout}s")
                time.sleep(poll_s)
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log_path.read_text(errors="replace")
    log_path.unlink(missing_ok=True)
    return RunResult(proc.returncode, _last_step(out_dir), output, time.perf_counter() - t0)
