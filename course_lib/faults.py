"""Fault injection: one switch, ``COURSE_FAULT``, for every crash the course stages on purpose.

``COURSE_FAULT`` is a comma-separated list of ``phase@step`` or ``phase@step:rank`` items, e.g.
``save_renamed@6`` (SIGKILL inside the checkpoint save of step 6, any rank) or
``after_step@6:1`` (rank 1 SIGKILLs itself once step 6 is finished and checkpointed).
Phases used by the library:

* ``save_begin``, ``save_partial`` (half of state.pt on disk), ``save_state_written``,
  ``save_marker_written``, ``save_renamed``, ``save_rotated``: inside ``CheckpointManager.save``;
* ``dcp_begin`` (temp folder made, nothing written), ``dcp_shard_written`` (this rank's DCP
  shard on disk, DCP's ``.metadata`` not yet), ``dcp_saved`` (every shard and ``.metadata``),
  ``dcp_trainer_written``, ``dcp_marker_written``, ``dcp_renamed``, ``dcp_rotated``: inside
  ``ShardedCheckpointManager.save`` (FSDP runs; ``@step:rank`` picks the rank, e.g.
  ``dcp_shard_written@8:1`` kills rank 1 once its own shard of step 8 is written);
* ``dcp_disk_full``: not a kill: this rank's DCP shard write fails with ``OSError(ENOSPC)``, as on
  a full disk (the failure travels through DCP's ``CheckpointException`` to every rank);
* ``after_step``: at the end of each ``Trainer.fit`` iteration (after logging and saving);
* tests add their own (``batch``, ``backward``, ``step_end`` in tests/reliability/kill_driver.py).

With ``COURSE_FAULT_ONCE=PATH`` a fault fires only if PATH does not exist, and PATH is written
first: a group restarted by ``torchrun --max-restarts`` then runs to the end.

Unset, a fault point costs one environment lookup. Used by the tests and lessons 4.0.1 / 4.1.2.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

FAULT_ENV = "COURSE_FAULT"
FAULT_ONCE_ENV = "COURSE_FAULT_ONCE"
SAVE_PHASES = (
    "save_begin",
    "save_partial",
    "save_state_written",
    "save_marker_written",
    "save_renamed",
    "save_rotated",
)
SHARDED_SAVE_PHASES = (
    "dcp_begin",
    "dcp_shard_written",
    "dcp_saved",
    "dcp_trainer_written",
    "dcp_marker_written",
    "dcp_renamed",
    "dcp_rotated",
)


def fault_spec(phase: str, step: int, rank: int | None = None) -> str:
    """The ``COURSE_FAULT`` item for ``phase`` at ``step`` (on ``rank`` only, if given)."""
    return f"{phase}@{step}" + (f":{rank}" if rank is not None else "")


def fault_env(phase: str, step: int, rank: int | None = None, once: os.PathLike | None = None) -> dict:
    """Environment variables that request one fault (add them to a subprocess's environment)."""
    env = {FAULT_ENV: fault_spec(phase, step, rank)}
    if once is not None:
        env[FAULT_ONCE_ENV] = str(once)
    return env


def fault_requested(phase: str, step: int, rank: int = 0) -> bool:
    """True when ``COURSE_FAULT`` lists ``phase@step`` or ``phase@step:rank``."""
    raw = os.environ.get(FAULT_ENV, "")
    if not raw:
        return False
    items = {item.strip() for item in raw.split(",")}
    return fault_spec(phase, step) in items or fault_spec(phase, step, rank) in items


def fault_point(phase: str, step: int, rank: int = 0) -> None:
    """Kill this process with SIGKILL if ``COURSE_FAULT`` asks for ``phase@step`` here.

    SIGKILL cannot be caught: no ``finally`` block, no atexit handler, no buffered flush runs,
    like the OOM killer or ``kill -9`` (the operating system's page cache survives it; a power
    cut is harsher, see the README's reliability section).
    """
    if not fault_requested(phase, step, rank):
        return
    once = os.environ.get(FAULT_ONCE_ENV)
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.write_text(f"{fault_spec(phase, step, rank)} pid {os.getpid()}\n")
    print(f"[fault] rank {rank}: SIGKILL at {phase}@{step}", file=sys.stderr, flush=True)
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # Windows: the closest thing
