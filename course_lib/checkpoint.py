"""Training checkpoints that survive crashes: atomic save, checksums, keep-last-K, safe load.

On disk, one folder per checkpoint::

    out_dir/checkpoints/step_00000100/state.pt       torch.save of the full training state
    out_dir/checkpoints/step_00000100/COMPLETE.json  written last: size + SHA-256 of state.pt

A save writes into a temporary folder, fsyncs the file, writes the marker, fsyncs it, then
renames the folder into place (an atomic operation on POSIX file systems) and fsyncs the
parent. A crash at any moment therefore leaves either the old set of checkpoints or the old
set plus one complete new one, never a half-written checkpoint under a real name. Old
checkpoints are deleted only *after* the new one is complete (the opposite order, as in some
trainers, can leave you with nothing).

``ShardedCheckpointManager`` (FSDP runs) keeps the same guarantees for checkpoints that every
rank writes a part of, through ``torch.distributed.checkpoint`` (DCP); see its docstring.

Loading uses ``torch.load(..., weights_only=True)`` only: a file that would need full pickle
(and could run code) is refused. Training checkpoints hold everything needed to *continue
training*; the inference artefact of lesson 4.2.1 (safetensors + config.json) holds only the
weights and the config and is a different file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from .distributed import barrier, broadcast_from_rank0, group_rank, in_group
from .faults import fault_point, fault_requested
from .fsio import fsync_dir as _fsync_dir
from .fsio import write_bytes_durably as _write_bytes_durably
from .util import first_line

FORMAT = "course_lib.checkpoint/1"
STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE.json"
_DIR_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used. The message names the file and the problem."""


# What a save can really raise: the OS (a full disk, permissions, I/O), torch.save's C++ writer
# (RuntimeError: "unexpected pos", "failed writing file") and DCP, which collects every rank's
# failure into a CheckpointException, a BaseException (``except Exception`` misses it).
SAVE_ERRORS = (OSError, RuntimeError, CheckpointException)


def root_causes(e: BaseException) -> list[BaseException]:
    """The exceptions behind ``e``: every rank's original one for a DCP ``CheckpointException``
    (which wraps them as ``failures: {rank: (exception, traceback)}``), else ``[e]``."""
    if isinstance(e, CheckpointException):
        found = [pair[0] for _, pair in sorted(e.failures.items()) if isinstance(pair, tuple) and pair]
        return [c for inner in found for c in root_causes(inner)] or [e]
    return [e]


def is_disk_full(e: BaseException) -> bool:
    """A full disk (or quota), however the writer reported it."""
    for c in root_causes(e):
        if isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # torch.save's C++ writer reports a full disk as "unexpected pos ..." / "failed writing file"
        if any(s in first_line(c) for s in ("No space left", "unexpected pos", "failed writing file")):
            return True
    return False


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_marker(folder: Path) -> tuple[Path, dict]:
    """``(marker path, marker)`` of a checkpoint folder whose completion marker is a JSON object,
    or a ``CheckpointError`` that says what is missing or wrong."""
    marker_path = folder / MARKER_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder")
    if not marker_path.exists():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no {MARKER_FILE}): the save was interrupted")
    if not marker_path.is_file():
        raise CheckpointError(f"{marker_path}: completion marker is not a file")
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{marker_path}: completion marker is not valid JSON ({e})") from None
    if not isinstance(marker, dict):
        raise CheckpointError(f"{marker_path}: completion marker is not a JSON object (got {type(marker).__name__})")
    return marker_path, marker


def check_recorded(path: Path, record: dict) -> None:
    """``path`` has the size and SHA-256 that a completion marker recorded for it
    (``record["bytes"]``, ``record["sha256"]``), or a ``CheckpointError`` says which differs."""
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise CheckpointError(f"{path}: size {size} bytes differs from the recorded {record.get('bytes')} (truncated?)")
    if sha256_file(path) != record.get("sha256"):
        raise CheckpointError(f"{path}: SHA-256 mismatch (file corrupted on disk, e.g. a flipped bit)")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; failures become a ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes): the save was cut off")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode gets the same clear wrapper
        msg = first_line(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "UnpicklingError" in type(e).__name__:
            raise CheckpointError(
                f"{path}: refused to load: the file needs full pickle (it contains objects other than "
                f"tensors and plain containers, which could run code). Only weights_only files are "
                f"accepted. Detail: {msg}"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupted?): {msg}") from None


class _CheckpointFolders:
    """What both checkpoint kinds share: one ``step_N`` folder per checkpoint under
    ``out_dir/checkpoints``, a completion marker written last, listing, keep-last-K rotation,
    the rename into place, verified loading of the state file, and the fallback to the newest
    checkpoint that loads. ``CheckpointManager`` (one file) and ``ShardedCheckpointManager``
    (DCP, every rank) are its two kinds; each has its own ``save`` and ``load_latest``.
    """

    FORMAT = FORMAT  # the format tag in the marker and in the loaded state
    STATE_FILE = STATE_FILE  # the file ``load`` reads (weights_only) after verifying the folder
    KIND = "training checkpoint"

    def __init__(
        self, out_dir: str | os.PathLike, keep_last: int = 3, interval: int = 100, verbose: bool = True
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: keep at least one checkpoint")
        self.dir = Path(out_dir) / "checkpoints"
        self.keep_last, self.interval, self.verbose = keep_last, interval, verbose
        self.last_save_seconds = 0.0
        self.total_save_seconds = 0.0

    # ---- listing -------------------------------------------------------------------------
    def path_for(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}"

    def list_complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint with a completion marker, oldest first."""
        if not self.dir.exists():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _DIR_RE.match(p.name)
            if m and p.is_dir() and (p / MARKER_FILE).exists():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self) -> Path | None:
        items = self.list_complete()
        return items[-1][1] if items else None

    def should_save(self, step: int) -> bool:
        return self.interval > 0 and step > 0 and step % self.interval == 0

    # ---- save ----------------------------------------------------------------------------
    def _move_into_place(self, tmp: Path, final: Path) -> None:
        """Rename a complete temp folder to its real name (the moment the checkpoint counts) and
        fsync the parent. Re-saving a step (e.g. after a resume) moves the old folder of that step
        aside first and deletes it after the rename; the other checkpoints are never touched here."""
        if final.exists():
            old = self.dir / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(self.dir)

    def _save_error(self, final: Path, e: BaseException) -> CheckpointError:
        """One line for a failed save: a full disk says so and what to do; the temp folder is
        already gone and nothing under a real name was touched."""
        causes = root_causes(e)
        cause = next((c for c in causes if is_disk_full(c)), causes[0])
        text = first_line(cause)
        if is_disk_full(e):
            return CheckpointError(
                f"{final}: disk full while saving this checkpoint ({text}); the earlier checkpoints in "
                f"{self.dir} are intact and nothing was renamed. Make room on that disk, or point --out-dir "
                "at a disk with space, then run again: training resumes from the last complete checkpoint"
            )
        return CheckpointError(
            f"{final}: saving failed ({type(cause).__name__}: {text}); the earlier checkpoints in {self.dir} are intact"
        )

    def _record_save_time(self, t0: float) -> None:
        self.last_save_seconds = time.perf_counter() - t0
        self.total_save_seconds += self.last_save_seconds

    def rotate(self) -> list[Path]:
        """Delete complete checkpoints beyond the newest ``keep_last``, and stale temp folders."""
        items = self.list_complete()
        removed = []
        for _, p in items[: max(0, len(items) - self.keep_last)]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        for p in [*self.dir.glob(".tmp-*"), *self.dir.glob(".old-*")]:  # left by a killed save
            pid = p.name.rsplit("-", 1)[-1]
            if pid != str(os.getpid()):
                shutil.rmtree(p, ignore_errors=True)
        return removed

    # ---- load ----------------------------------------------------------------------------
    @classmethod
    def verify(cls, folder: str | os.PathLike) -> dict:
        """Check the marker, size and checksum of a checkpoint folder; return the marker."""
        folder = Path(folder)
        try:
            return cls._verify(folder)
        except OSError as e:  # unreadable (permissions), a folder where a file should be, I/O error
            raise CheckpointError(f"{e.filename or folder}: cannot read ({e.strerror or type(e).__name__})") from None

    @staticmethod
    def _verify(folder: Path) -> dict:
        raise NotImplementedError

    def load(self, folder: str | os.PathLike, map_location: Any = "cpu") -> dict:
        """Verify the folder, then load its state file with ``weights_only=True``. Raises ``CheckpointError``."""
        folder = Path(folder)
        self.verify(folder)
        path = folder / self.STATE_FILE
        state = safe_torch_load(path, map_location)
        if not isinstance(state, dict) or state.get("format") != self.FORMAT:
            raise CheckpointError(f"{path}: not a course_lib {self.KIND} (no format tag {self.FORMAT!r})")
        return state

    def first_good(self, attempt: Callable[[Path], Any]) -> tuple[Any, Path] | None:
        """``(attempt(folder), folder)`` for the newest checkpoint where ``attempt`` does not raise
        ``CheckpointError``; each one skipped is reported once (a warning, on rank 0 only, so
        tests and notebooks can catch it); ``None`` when no checkpoint is usable."""
        for _, folder in reversed(self.list_complete()):
            try:
                return attempt(folder), folder
            except CheckpointError as e:
                if group_rank() == 0:
                    warnings.warn(f"skipping checkpoint {folder.name}: {e}", stacklevel=3)
        return None


class CheckpointManager(_CheckpointFolders):
    """Save every ``interval`` steps, keep the last ``keep_last``, find and load the latest good one.

    ``save(step, state)`` and ``load_latest()`` work on plain dicts; the trainer decides what
    goes in (model, optimizer, scheduler, scaler, RNG, data position, config).
    """

    def save(self, step: int, state: dict, on_written: Callable[[Path], None] | None = None) -> Path:
        """Atomically write ``state`` as checkpoint ``step``; then rotate old ones.

        ``on_written`` (tests only) is called between the file write and the rename, to
        simulate a crash inside a save.
        """
        t0 = time.perf_counter()
        fault_point("save_begin", step)
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.dir / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        state = dict(state, format=FORMAT, step=step)
        state_path = tmp / STATE_FILE
        try:
            with open(state_path, "wb") as f:
                torch.save(state, f)
                f.flush()
                if fault_requested("save_partial", step):  # a torn write: half the bytes on disk
                    f.truncate(f.tell() // 2)
                    f.flush()
                    fault_point("save_partial", step)
                os.fsync(f.fileno())
            fault_point("save_state_written", step)
            if on_written is not None:
                on_written(tmp)
            marker = {
                "format": FORMAT,
                "step": step,
                "file": STATE_FILE,
                "bytes": state_path.stat().st_size,
                "sha256": sha256_file(state_path),
                "time": time.time(),
            }
            _write_bytes_durably(tmp / MARKER_FILE, json.dumps(marker, indent=2).encode())
            _fsync_dir(tmp)
        except SAVE_ERRORS as e:
            # Nothing under a real name was touched yet: drop the partial temp folder and say why.
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._save_error(final, e) from None
        fault_point("save_marker_written", step)
        self._move_into_place(tmp, final)
        fault_point("save_renamed", step)
        self.rotate()
        fault_point("save_rotated", step)
        self._record_save_time(t0)
        return final

    @staticmethod
    def _verify(folder: Path) -> dict:
        marker_path, marker = read_marker(folder)
        state_path = folder / STATE_FILE
        if marker.get("format") != FORMAT:
            raise CheckpointError(
                f"{marker_path}: unknown checkpoint format {marker.get('format')!r}; expected {FORMAT}"
            )
        if not state_path.is_file():
            raise CheckpointError(f"{state_path}: missing although the marker exists")
        if state_path.stat().st_size == 0:
            raise CheckpointError(f"{state_path}: file is empty (0 bytes)")
        check_recorded(state_path, marker)
        return marker

    def load_latest(
        self, map_location: Any = "cpu", validate: Callable[[dict], None] | None = None
    ) -> tuple[dict, Path] | None:
        """Newest checkpoint that loads (and passes ``validate(state)``, if given).

        A bad one is reported and skipped in favour of the one before it; ``None`` when there
        is no usable checkpoint at all.
        """

        def attempt(folder: Path) -> dict:
            state = self.load(folder, map_location)
            if validate is not None:
                validate(state)
            return state

        return self.first_good(attempt)


# ------------------------------------------------------------------------------------------
# Sharded checkpoints (FSDP): every rank writes its own shard through torch.distributed.checkpoint
# ------------------------------------------------------------------------------------------
SHARDED_FORMAT = "course_lib.checkpoint.sharded/1"
TRAINER_FILE = "trainer.pt"
DCP_METADATA = ".metadata"


def checkpoint_format(folder: str | os.PathLike) -> str | None:
    """The ``format`` recorded in a checkpoint's completion marker (``None`` if unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker.get("format") if isinstance(marker, dict) else None


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every save/load without a process group ("assuming the intent is to ... in a
    single process"); one process is a case the course uses on purpose (resume 2 -> 1, export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _on_rank0(fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 only and let every rank share its outcome (a collective, so also a
    barrier): if it fails, rank 0 re-raises and every other rank raises a ``CheckpointError`` with
    the same message, instead of waiting forever for a rank that has given up."""
    error: str | None = None
    failure: BaseException | None = None
    if group_rank() == 0:
        try:
            fn()
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - re-raised below, after telling the others
            failure, error = e, str(e) or type(e).__name__
    error = broadcast_from_rank0(error)
    if failure is not None:
        raise failure
    if error is not None:
        raise CheckpointError(error)


class _ShardWriter(dcp.FileSystemWriter):
    """DCP's file writer (one file per rank, fsynced) with a fault point once this rank's shard
    is on disk and before rank 0 has written DCP's ``.metadata``: a kill there leaves a folder
    with some shards and no index, the "half-written sharded checkpoint" case. ``dcp_disk_full``
    (``COURSE_FAULT``, tests only) makes this rank's write fail the way a full disk does."""

    def __init__(self, path: str, step: int, rank: int) -> None:
        super().__init__(path, sync_files=True)
        self._step, self._rank = step, rank

    def write_data(self, plan, planner):
        if fault_requested("dcp_disk_full", self._step, self._rank):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fut = super().write_data(plan, planner)
        fut.wait()
        fault_point("dcp_shard_written", self._step, self._rank)
        return fut


class ShardedCheckpointManager(_CheckpointFolders):
    """Checkpoints written by every rank at once with ``torch.distributed.checkpoint`` (DCP).

    On disk, one folder per checkpoint (torchtitan's layout plus the course's marker)::

        out_dir/checkpoints/step_00000100/__0_0.distcp    rank 0's shard of model + optimizer
        out_dir/checkpoints/step_00000100/__1_0.distcp    rank 1's shard
        out_dir/checkpoints/step_00000100/.metadata       DCP's index: which bytes hold which slice
        out_dir/checkpoints/step_00000100/trainer.pt      step, schedule, RNG of every rank, data
                                                          position in global samples, config
        out_dir/checkpoints/step_00000100/COMPLETE.json   written last: size + SHA-256 of every file

    A save (a collective: every rank calls ``save``) writes into ``step_00000100.tmp/``; after a
    barrier (every shard is on disk and fsynced) rank 0 writes ``trainer.pt`` and the marker,
    renames the folder into place and rotates, then tells the other ranks how it went. Only a
    folder with a valid marker counts, so a crash at any moment leaves the previous checkpoints
    usable; a failed save (a full disk on any rank) removes its temp folder and raises the same
    ``CheckpointError`` on every rank. DCP stores each tensor with its global shape and the
    slice each shard holds, so a checkpoint written by N ranks loads on M ranks (or one
    process): each rank reads exactly the slices its new shard needs ("resharding").

    Listing, ``latest()``, keep-last-K rotation and the fallback to an older checkpoint are
    shared with ``CheckpointManager``; ``load_latest(shards_fn=...)`` loads into the caller's
    state dict.
    """

    FORMAT = SHARDED_FORMAT
    STATE_FILE = TRAINER_FILE  # ``load`` reads trainer.pt; the shards load through ``load_shards``
    KIND = "sharded checkpoint"

    def tmp_path_for(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.tmp"

    def save(self, step: int, shards: dict, trainer_state: dict) -> Path:
        """Write ``shards`` (the DCP state dict: model + optimizer, sharded) from every rank and
        ``trainer_state`` (plain containers and tensors) from rank 0. Every rank calls this."""
        t0 = time.perf_counter()
        rank = group_rank()
        world = torch.distributed.get_world_size() if in_group() else 1
        final, tmp = self.path_for(step), self.tmp_path_for(step)

        def failed(e: BaseException) -> CheckpointError:
            if rank == 0:  # every rank's writes are over (DCP gathered their outcomes): drop the partial folder
                shutil.rmtree(tmp, ignore_errors=True)
            return self._save_error(final, e)

        def make_tmp() -> None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                if tmp.exists():  # left by a killed save of the same step
                    shutil.rmtree(tmp)
                tmp.mkdir()
            except OSError as e:
                raise failed(e) from None

        _on_rank0(make_tmp)
        fault_point("dcp_begin", step, rank)
        try:
            with _single_process_quiet():
                dcp.save(shards, storage_writer=_ShardWriter(str(tmp), step, rank), no_dist=not in_group())
        except SAVE_ERRORS as e:
            # DCP collects a failure on any rank into one CheckpointException that every rank receives
            raise failed(e) from None
        fault_point("dcp_saved", step, rank)
        barrier()  # every rank's shard is written and fsynced

        def finish() -> None:
            try:
                with open(tmp / TRAINER_FILE, "wb") as f:
                    torch.save(dict(trainer_state, format=self.FORMAT, step=step, world_size=world), f)
                    f.flush()
                    os.fsync(f.fileno())
                fault_point("dcp_trainer_written", step, rank)
                files = {
                    p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                    for p in sorted(tmp.iterdir())
                    if p.is_file()
                }
                marker = {"format": self.FORMAT, "step": step, "world_size": world, "files": files, "time": time.time()}
                _write_bytes_durably(tmp / MARKER_FILE, json.dumps(marker, indent=2).encode())
                _fsync_dir(tmp)
            except SAVE_ERRORS as e:
                raise failed(e) from None
            fault_point("dcp_marker_written", step, rank)
            self._move_into_place(tmp, final)
            fault_point("dcp_renamed", step, rank)
            self.rotate()
            fault_point("dcp_rotated", step, rank)

        _on_rank0(finish)  # nobody runs ahead (or exits) before the checkpoint is complete
        self._record_save_time(t0)
        return final

    def rotate(self) -> list[Path]:
        """Also drop ``step_*.tmp`` folders: saves that were killed before their marker."""
        removed = super().rotate()
        if self.dir.exists():
            for p in self.dir.glob("step_*.tmp"):
                shutil.rmtree(p, ignore_errors=True)
        return removed

    @staticmethod
    def _verify(folder: Path) -> dict:
        """The marker and the size + SHA-256 of every file it lists (``verify`` wraps it)."""
        marker_path, marker = read_marker(folder)
        if not isinstance(marker.get("files"), dict):
            raise CheckpointError(f"{marker_path}: completion marker is not a sharded-checkpoint marker")
        if marker.get("format") != SHARDED_FORMAT:
            raise CheckpointError(
                f"{marker_path}: checkpoint format {marker.get('format')!r}; expected {SHARDED_FORMAT}"
            )
        for needed in (TRAINER_FILE, DCP_METADATA):
            if needed not in marker["files"]:
                raise CheckpointError(f"{marker_path}: lists no {needed}")
        for name, rec in marker["files"].items():
            p = folder / name
            if not p.is_file():
                raise CheckpointError(f"{p}: missing although the marker lists it")
            check_recorded(p, rec)
        return marker

    @staticmethod
    def load_shards(folder: str | os.PathLike, shards: dict) -> None:
        """Fill ``shards`` (a DCP state dict, e.g. model + optimizer) in place from ``folder``.
        Every rank calls it; each reads the slices its own shards cover. DCP gathers a failure on
        any rank into one ``CheckpointException`` (a BaseException) that every rank receives, so
        every rank skips the same checkpoint."""
        try:
            with _single_process_quiet():
                dcp.load(shards, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=not in_group())
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - any DCP failure: this checkpoint cannot be used
            cause = root_causes(e)[0]
            raise CheckpointError(
                f"{folder}: the sharded state could not be loaded ({type(cause).__name__}: {first_line(cause)[:300]})"
            ) from None

    def load_latest(
        self,
        *,
        shards_fn: Callable[[], dict] | None = None,
        map_location: Any = "cpu",
        validate: Callable[[dict], None] | None = None,
    ) -> tuple[dict, Path] | None:
        """Newest checkpoint that verifies, passes ``validate(trainer_state)`` and loads.

        ``shards_fn()`` returns the state dict to load the shards into (built fresh for each
        attempt); ``None`` loads only the trainer state. A bad checkpoint is reported and
        skipped in favour of the one before it; ``None`` when none is usable. Keyword-only: the
        two managers' ``load_latest`` differ, and a positional argument must not land in the
        wrong one.
        """

        def attempt(folder: Path) -> dict:
            state = self.load(folder, map_location)
            if validate is not None:
                validate(state)
            if shards_fn is not None:
                self.load_shards(folder, shards_fn())
            return state

        return self.first_good(attempt)
