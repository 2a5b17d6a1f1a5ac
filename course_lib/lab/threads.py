"""torch's CPU thread count, chosen deliberately instead of left to the default.

torch uses one thread per core by default. On a machine whose cores are busy with something
else, that oversubscribes them: on a loaded 2-core machine 30 small training steps took 10-15 s
with 1 thread and 100-130 s with torch's default of 2. The lessons' models are small, so extra
threads buy little when the machine is idle and cost a lot when it is not.

    from course_lib.lab.threads import setup_threads
    setup_threads()          # every lesson's setup cell; prints one line saying what it chose

Rule: the cores this process may use, minus the load already running (1-minute load average),
at least 1 and at most MAX_THREADS. `COURSE_THREADS=N` overrides the rule. The choice is also
exported as OMP_NUM_THREADS, so training subprocesses (the CLI, torchrun workers) follow it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_THREADS = 8  # the course's models stop scaling well beyond this on CPU
ENV = "COURSE_THREADS"


@dataclass
class ThreadChoice:
    threads: int
    cores: int
    load: float | None
    reason: str

    def line(self) -> str:
        load = "未知" if self.load is None else f"{self.load:.1f}"
        return (
            f"torch CPU 线程数 (threads) = {self.threads}（可用核 {self.cores}，当前负载 {load}；{self.reason}；"
            f"想指定就设环境变量 {ENV}=N）"
        )


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def choose_threads(cores: int | None = None, load: float | None = None, env: str | None = None) -> ThreadChoice:
    """The thread count for this machine now (pure: pass cores/load/env to test it)."""
    cores = usable_cores() if cores is None else cores
    raw = os.environ.get(ENV) if env is None else env
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"环境变量 {ENV} 应是正整数，收到 {raw!r}：删掉它或改成如 {ENV}=2") from None
        if n < 1:
            raise ValueError(f"环境变量 {ENV} 应是正整数，收到 {raw!r}：删掉它或改成如 {ENV}=2")
        return ThreadChoice(n, cores, load, f"来自 {ENV}")
    if load is None:
        return ThreadChoice(max(1, min(cores, MAX_THREADS)), cores, None, "负载未知，按核数")
    free = int(cores - load + 0.5)
    n = max(1, min(free, cores, MAX_THREADS))
    why = "机器空闲，按核数" if n == min(cores, MAX_THREADS) else "其他程序在占用 CPU，少开线程以免互相抢占"
    return ThreadChoice(n, cores, load, why)


def setup_threads(verbose: bool = True) -> ThreadChoice:
    """Choose and apply torch's CPU thread count (and OMP_NUM_THREADS for subprocesses)."""
    import torch  # here, so that choose_threads (used by the environment check) needs no torch

    choice = choose_threads(load=load_average())
    torch.set_num_threads(choice.threads)
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    if verbose:
        print(choice.line())
    return choice
