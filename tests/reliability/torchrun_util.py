"""Shared by the DDP and FSDP torchrun tests: CLI flags from a dict, and one torchrun run whose
failure shows the useful end of its output."""

from __future__ import annotations

from course_lib.distributed import run_streaming

TIMEOUT = 240


def flags(settings: dict) -> list[str]:
    """``{"max_steps": 8, ...}`` -> ``["--max-steps", "8", ..., "--no-tensorboard"]``."""
    args = []
    for k, v in settings.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args + ["--no-tensorboard"]


def run(cmd, env=None, timeout_s: float = TIMEOUT) -> list[str]:
    """Run a torchrun command (1 thread, quick mode); assert it succeeded; return its lines."""
    env = dict(env or {}, OMP_NUM_THREADS="1", COURSE_QUICK="1")
    rc, lines = run_streaming(cmd, env=env, timeout_s=timeout_s, echo=False)
    useful = [ln for ln in lines if not ln.startswith(("[rank0]:  ", "[rank1]:  ", "  File", "    "))]
    assert rc == 0, "torchrun 失败 (failed)，输出：\n" + "\n".join(useful[-60:])
    return lines
