"""WRONG on purpose (tests/test_grader_strength.py): FSDP = the DDP numbers divided by the world size
(ignores that dim-0 shards are uneven and that the step counters are not sharded)."""

import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel


def per_rank_memory(model_cfg: ModelConfig, world_size: int, strategy: str = "fsdp", rank: int = 0) -> dict:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError("bad rank")
    with torch.device("meta"):
        model = DIYModel(model_cfg)
    params = sum(p.numel() for p in model.parameters()) * 4
    optimizer = 2 * params + 4 * len(list(model.parameters()))
    div = world_size if strategy == "fsdp" else 1
    params, optimizer = params // div, optimizer // div
    return {"params": params, "grads": params, "optimizer": optimizer, "total": 2 * params + optimizer}
