"""Grader-side wrapper that runs a learner's training script and watches it from inside.

    python tests/exercises/train_script_harness.py SCRIPT [script args...]

Environment:
    HARNESS_TRACE     file to append one JSON line per event to (unbuffered: a SIGKILL loses nothing)
    HARNESS_CKPT_DIR  the run's checkpoint folder (out_dir/checkpoints); writes and renames under it
                      are the kill points below, whatever API the script uses
    HARNESS_KILL      "" (run to the end), or one kill point of this process:
                      "step:K"   SIGKILL right after the K-th optimizer step;
                      "write:K"  the K-th file opened for writing under the checkpoint folder is
                                 torn: when the script closes (or fsyncs) it, the file is cut to
                                 half its length, then SIGKILL (a crash in the middle of a write);
                      "rename:K" SIGKILL just before the K-th os.replace / os.rename that touches
                                 the checkpoint folder (the moment between "written" and "in place").

Writes are seen at every layer a script can reach them from Python: open() / io.open (so
Path.open, Path.write_bytes / write_text, shutil.copyfile, torch.save to a path or a file object),
os.open + os.write, os.fdopen / tempfile on such a descriptor. shutil's sendfile fast path is
turned off so its copies go through write() too. Renames: os.replace / os.rename (Path.replace,
Path.rename and shutil.move call them).

Events: "start"; "fwd" (hashes of the weights, the input batch and the torch RNG state at each
training-mode forward of the top-level model); "step" (learning rates, a hash of the optimizer
state and the global grad-norm just before each optimizer step); "save" (top-level keys of
what torch.save was given and whether it loads with weights_only=True); "killed" (where, which
file, and what the checkpoint folder held at that moment).
The script never knows: it is run with runpy as __main__, with its own argv.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import runpy
import shutil
import signal
import sys

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

_fd = os.open(os.environ["HARNESS_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_kill = os.environ.get("HARNESS_KILL", "")
_kind, _, _k = _kill.partition(":")
_limit = int(_k) if _k else 0
_ckpt = os.path.realpath(os.environ["HARNESS_CKPT_DIR"]) if os.environ.get("HARNESS_CKPT_DIR") else ""
_counts = {"step": 0, "save": 0, "write": 0, "rename": 0}

# the real functions, taken before anything is patched
_open, _os_open, _os_close, _os_fsync = builtins.open, os.open, os.close, os.fsync
_os_replace, _os_rename = os.replace, os.rename
_torn_fds: dict[int, str] = {}  # os.open'ed descriptor -> path, for the file being torn


def emit(**event) -> None:
    os.write(_fd, (json.dumps(event) + "\n").encode())


def digest(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _is_top_model(module) -> bool:
    return type(module).__name__ == "DIYModel"


def on_forward(module, args):
    if not (_is_top_model(module) and module.training):
        return
    ids = args[0] if args else None
    emit(
        e="fwd",
        w=digest(module.state_dict().values()),
        d=digest([ids]) if isinstance(ids, torch.Tensor) else "",
        r=digest([torch.get_rng_state()]),
    )


def _opt_tensors(opt):
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            for v in opt.state.get(p, {}).values():
                if isinstance(v, torch.Tensor):
                    out.append(v)
    return out


def on_step_pre(opt, args, kwargs):
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    gn = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    emit(e="step", lr=[float(g["lr"]) for g in opt.param_groups], o=digest(_opt_tensors(opt)), gn=gn)


def on_step_post(opt, args, kwargs):
    _counts["step"] += 1
    if _kind == "step" and _counts["step"] == _limit:
        emit(e="killed", at="step")
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- checkpoint-folder writes
def _watched(path) -> str:
    """The path relative to the checkpoint folder if it lies under it, else ""."""
    if not _ckpt or isinstance(path, int):
        return ""
    try:
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
    except TypeError:
        return ""
    return os.path.relpath(real, _ckpt) if real.startswith(_ckpt + os.sep) else ""


def _listing() -> list[str]:
    try:
        return sorted(os.listdir(_ckpt))
    except OSError:
        return []


def _tear(fd: int, name: str) -> None:
    """Cut the file behind `fd` to half of what was written, then die."""
    size = os.fstat(fd).st_size
    os.ftruncate(fd, size // 2)
    emit(e="killed", at="write", file=name, size=size, kept=size // 2, files=_listing())
    os.kill(os.getpid(), signal.SIGKILL)


def _next_write_is_torn() -> bool:
    _counts["write"] += 1
    return _kind == "write" and _counts["write"] == _limit


class _TornFile:
    """A file object under the checkpoint folder that is torn when the script closes or fsyncs it."""

    def __init__(self, f, name: str):
        self._f, self._name = f, name

    def _tear(self) -> None:
        self._f.flush()
        _tear(self._f.fileno(), self._name)

    def close(self) -> None:
        self._tear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._tear()

    def __del__(self) -> None:
        if not self._f.closed:
            self._tear()

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def patched_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    writing = any(c in mode for c in "wax+")
    name = _torn_fds.pop(file, "") if isinstance(file, int) else _watched(file)
    if writing and name and (isinstance(file, int) or _next_write_is_torn()):
        return _TornFile(f, name)
    return f


def patched_os_open(path, flags, *args, **kwargs):
    fd = _os_open(path, flags, *args, **kwargs)
    name = _watched(path)
    if name and flags & (os.O_WRONLY | os.O_RDWR) and _next_write_is_torn():
        _torn_fds[fd] = name
    return fd


def patched_os_fdopen(fd, *args, **kwargs):
    return patched_open(fd, *args, **kwargs)


def patched_os_close(fd):
    if fd in _torn_fds:
        _tear(fd, _torn_fds[fd])
    return _os_close(fd)


def patched_os_fsync(fd):
    real = fd if isinstance(fd, int) else fd.fileno()
    if real in _torn_fds:
        _tear(real, _torn_fds[real])
    return _os_fsync(fd)


def _renaming(src, dst) -> None:
    name_src, name_dst = _watched(src), _watched(dst)
    if not (name_src or name_dst):
        return
    _counts["rename"] += 1
    if _kind == "rename" and _counts["rename"] == _limit:
        emit(e="killed", at="rename", src=name_src, dst=name_dst, files=_listing())
        os.kill(os.getpid(), signal.SIGKILL)


def patched_replace(src, dst, *args, **kwargs):
    _renaming(src, dst)
    return _os_replace(src, dst, *args, **kwargs)


def patched_rename(src, dst, *args, **kwargs):
    _renaming(src, dst)
    return _os_rename(src, dst, *args, **kwargs)


_real_save = torch.save


def patched_save(obj, f, *args, **kwargs):
    """Serialize in memory (to record what was saved), then write through open() / f.write so
    a torch.save to a path is a watched write like any other."""
    buf = io.BytesIO()
    _real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), weights_only=True)
        safe = True
    except Exception:  # noqa: BLE001
        safe = False
    emit(e="save", keys=sorted(map(str, obj)) if isinstance(obj, dict) else [], weights_only_ok=safe)
    _counts["save"] += 1
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            fh.write(data)
    else:
        f.write(data)


def install() -> None:
    register_module_forward_pre_hook(on_forward)
    register_optimizer_step_pre_hook(on_step_pre)
    register_optimizer_step_post_hook(on_step_post)
    torch.save = patched_save
    builtins.open = io.open = patched_open
    os.open, os.fdopen, os.close, os.fsync = patched_os_open, patched_os_fdopen, patched_os_close, patched_os_fsync
    os.replace, os.rename = patched_replace, patched_rename
    shutil._USE_CP_SENDFILE = False  # copies go through write(), where they can be torn


def main() -> None:
    script, *rest = sys.argv[1:]
    install()
    emit(e="start", kill=_kill)
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
