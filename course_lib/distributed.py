"""The torchrun environment, the process group, and rank-0 helpers.

``torchrun --nproc_per_node=N -m course_lib.train`` starts N processes and gives each the
environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. ``setup()`` reads them, picks the backend (nccl when every process has its own
GPU, gloo on CPU), binds the process to ``cuda:LOCAL_RANK`` on GPU machines, and joins the
group. Started with plain ``python``, there is no such environment and ``setup()`` returns a
single-process ``DistInfo`` without touching torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={pref!r} asked for, but CUDA is not available; use device=auto or cpu")
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
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                               "use --nproc_per_node <= number of GPUs")
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        from datetime import timedelta
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, backend=backend, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Average a Python float over all ranks (for logging a global loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size
