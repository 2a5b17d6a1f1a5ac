"""WRONG on purpose (tests/test_grader_strength.py): counts fully_shard's padding, ceil(n0/W) rows on
every rank, as if the last rank held a full shard."""

import math

import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel


def per_rank_memory(model_cfg: ModelConfig, world_size: int, strategy: str = "fsdp", rank: int = 0) -> dict:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError("bad rank")
    with torch.device("meta"):
        model = DIYModel(model_cfg)
    shapes = [tuple(p.shape) for p in model.parameters()]
    if strategy == "ddp":
        held = sum(math.prod(s) for s in shapes)
    else:
        held = sum(math.ceil(s[0] / world_size) * math.prod(s[1:]) for s in shapes)
    params = held * 4
    optimizer = 2 * params + 4 * len(shapes)
    return {"params": params, "grads": params, "optimizer": optimizer, "total": 2 * params + optimizer}
