"""Grader-side wrapper that runs a learner's training script and watches it from inside.

    python tests/exercises/train_script_harness.py SCRIPT [script args...]

Environment:
    HARNESS_TRACE   file to append one JSON line per event to (unbuffered: a SIGKILL loses nothing)
    HARNESS_KILL    "" (run to the end), "step:K" (SIGKILL right after this process's K-th
                    optimizer step) or "save:K" (on this process's K-th torch.save call, write
                    the first half of the file, then SIGKILL: a crash in the middle of a save)

Events: "start"; "fwd" (hashes of the weights, the input batch and the torch RNG state at each
training-mode forward of the top-level model); "step" (learning rates, a hash of the optimizer
state and the global grad-norm just before each optimizer step); "save" (top-level keys of
what torch.save was given and whether it loads with weights_only=True).
The script never knows: it is run with runpy as __main__, with its own argv.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
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
_counts = {"step": 0, "save": 0}
_models: set = set()


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
    emit(e="fwd", w=digest(module.state_dict().values()),
         d=digest([ids]) if isinstance(ids, torch.Tensor) else "",
         r=digest([torch.get_rng_state()]))


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


_real_save = torch.save


def patched_save(obj, f, *args, **kwargs):
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
    if _kind == "save" and _counts["save"] == _limit:
        part = data[: len(data) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(part)
        else:
            f.write(part)
            f.flush()
        emit(e="killed", at="save")
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            fh.write(data)
    else:
        f.write(data)


def main() -> None:
    script, *rest = sys.argv[1:]
    register_module_forward_pre_hook(on_forward)
    register_optimizer_step_pre_hook(on_step_pre)
    register_optimizer_step_post_hook(on_step_post)
    torch.save = patched_save
    emit(e="start", kill=_kill)
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
