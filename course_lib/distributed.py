"""The torchrun environment, the process group, and rank-0 helpers.

``torchrun --nproc_per_node=N -m course_lib.train`` starts N processes and gives each the
environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. ``setup()`` reads them, picks the backend (nccl when every process has its own
GPU, gloo on CPU), binds the process to ``cuda:LOCAL_RANK`` on GPU machines, and joins the
group. Started with plain ``python``, there is no such environment and ``setup()`` returns a
single-process ``DistInfo`` without touching torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"TrainConfig.device: {pref!r} asked for, but CUDA is not available here; use --device auto or cpu"
            )
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def setup(device_pref: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the process group if launched by torchrun; otherwise a single-process DistInfo."""
    rank, local_rank, world = env_info()
    device = resolve_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                "use --nproc_per_node <= number of GPUs"
            )
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if rank == 0 and restarts_may_fail():
        print(
            "[distributed] warning: torchrun shares its rendezvous store with the workers, so a restart "
            "(--max-restarts) can fail with 'connectFullMesh failed'; launch with `python -m course_lib.launch "
            "...` (same arguments as torchrun) or set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            flush=True,
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, backend=backend, device=device)


def cleanup(synchronize: bool = True) -> None:
    """Leave the process group. With ``synchronize`` (a normal end) every rank first waits at a
    barrier: without it, rank 0 can tear the group down while rank 1 is still finishing its
    last collective, and rank 1 aborts ("terminate called without an active exception",
    SIGABRT, torchrun exit 1) although the run is complete. After an error, skip the barrier:
    the other ranks may never reach it."""
    if in_group():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def in_group() -> bool:
    """True inside an initialised process group (torchrun), False in a plain process."""
    return dist.is_available() and dist.is_initialized()


def group_rank() -> int:
    """This process's rank in the group (0 outside one)."""
    return dist.get_rank() if in_group() else 0


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if in_group():
        dist.barrier()


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (also a barrier); ``obj`` itself outside a process group."""
    if not in_group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------
# Launching and testing helpers (used by tests, the 4.1.2 notebook and bench scripts)
# ------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1 (ask the OS; never hard-code a port).

    Free *now*: another process may take it before whoever it is for binds it. For a process
    group started by hand use ``rendezvous_store`` instead; a server should bind port 0 and
    report the port it got."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rendezvous_store(host: str = "127.0.0.1", timeout_s: float = 300.0):
    """A c10d ``TCPStore`` that this (launching) process hosts on a port the OS chooses, for ranks
    started by hand; yields the environment that points every rank's ``init_process_group`` at it.

    It is what torchrun's agent does: the launcher holds the store and each rank connects to it as a
    client (``TORCHELASTIC_USE_AGENT_STORE=True``; without it rank 0 would try to host a store of
    its own on ``MASTER_PORT``). The port is bound before any rank starts, so launches running in
    parallel (test workers) cannot race for it. The store lives until the block ends: leave it
    after the ranks have exited."""
    store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))
    try:
        yield {"MASTER_ADDR": host, "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    finally:
        del store


def torchrun_command(
    script_args,
    nproc_per_node: int = 2,
    module: str = "course_lib.train",
    nnodes: int = 1,
    node_rank: int = 0,
    master_port: int | None = None,
    max_restarts: int = 0,
    rdzv_endpoint: str | None = None,
) -> list:
    """The ``torchrun`` command line as a list, through ``python -m course_lib.launch`` (torchrun
    with ``TORCHRUN_ENV`` applied, so ``--max-restarts`` restarts work; same arguments).

    One node: ``--standalone`` (torchrun picks a free rendezvous port itself). Several nodes:
    the static form ``--nnodes --node-rank --master-addr --master-port`` when ``master_port``
    is given, or the elastic ``--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT`` form.
    """
    cmd = [
        sys.executable,
        "-m",
        "course_lib.launch",
        f"--nproc-per-node={nproc_per_node}",
        f"--max-restarts={max_restarts}",
    ]
    if nnodes == 1 and master_port is None and rdzv_endpoint is None:
        cmd.append("--standalone")
    elif rdzv_endpoint is not None:
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=course"]
    else:
        cmd += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={master_port}",
        ]
    return cmd + ["-m", module] + [str(a) for a in script_args]


# torchrun (torch >= 2.4) lets workers share the rendezvous TCPStore by default. After a restart
# (--max-restarts) the new workers can then read the previous attempt's gloo/nccl addresses and
# fail with "connectFullMesh failed ... Connection refused" (pytorch issues #135712, #167288;
# seen here with torch 2.13 + gloo, about one restart in three). A separate store per attempt
# avoids it. It must be in torchrun's own environment (the agent decides before any worker starts):
# `python -m course_lib.launch ...` (launch.py) sets it and runs torchrun; `subprocess_env` adds it
# for every process the course starts. A worker can only detect the problem: see restarts_may_fail.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def restarts_may_fail() -> bool:
    """True in a torchrun worker whose agent shares its store and may restart the group."""
    return (
        os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0
    )


def subprocess_env(extra: dict | None = None) -> dict:
    """The environment for every training process the course starts (runner, notebooks, tests):
    this process's environment, ``TORCHRUN_ENV``, unbuffered output (live logs), then ``extra``."""
    env = dict(os.environ, **TORCHRUN_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def run_streaming(
    cmd,
    env: dict | None = None,
    timeout_s: float = 600.0,
    echo: bool = True,
    prefix_filter=None,
    max_width: int | None = None,
) -> tuple[int, list]:
    """Run ``cmd``, printing its output line by line as it arrives (so a notebook cell shows a
    live log), and return ``(returncode, lines)``. ``prefix_filter`` (a string or a tuple of
    strings) shows only lines containing one of them, ``max_width`` cuts each shown line to that
    many characters (all lines are still returned whole). Kills the process group on timeout."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(env),
        start_new_session=True,
    )
    lines: list = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if echo and (
                prefix_filter is None
                or any(p in line for p in ((prefix_filter,) if isinstance(prefix_filter, str) else prefix_filter))
            ):
                shown = line.rstrip("\n")
                if max_width is not None and len(shown) > max_width:
                    shown = shown[:max_width] + " …"
                print(shown, flush=True)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    t0 = time.monotonic()
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout_s:
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards it to its workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            t.join(5)
            raise TimeoutError(
                f"{cmd[:4]}... did not finish in {timeout_s:.0f}s; last output:\n" + "\n".join(lines[-20:])
            )
        time.sleep(0.05)
    t.join(5)
    return proc.returncode, lines
