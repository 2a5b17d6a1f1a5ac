"""练习 ex412 参考答案：DDP 初始化 (setup)。"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def setup_ddp(
    model: torch.nn.Module, dataset: Dataset, batch_size: int, seed: int = 0
) -> tuple[DistributedDataParallel, DataLoader, DistributedSampler]:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=rank, world_size=world)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    return DistributedDataParallel(model), loader, sampler
