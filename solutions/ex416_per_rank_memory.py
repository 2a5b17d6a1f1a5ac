"""参考答案 ex416：逐 rank 的参数、梯度和 AdamW 状态（DDP 完整一份，FSDP 按第 0 维分片）。"""

import math

import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel

FP32 = 4


def per_rank_memory(model_cfg: ModelConfig, world_size: int, strategy: str = "fsdp", rank: int = 0) -> dict:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} 应在 0..{world_size - 1} 之间（world_size={world_size} >= 1）")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy={strategy!r}：只能是 'ddp' 或 'fsdp'")
    with torch.device("meta"):  # shapes only, no memory
        model = DIYModel(model_cfg)
    shapes = [tuple(p.shape) for p in model.parameters()]  # a tied parameter once
    held = 0
    for shape in shapes:
        if strategy == "ddp":
            held += math.prod(shape)
        else:
            c = math.ceil(shape[0] / world_size)
            rows = max(0, min(c, shape[0] - rank * c))
            held += rows * math.prod(shape[1:])
    params = held * FP32
    optimizer = 2 * params + FP32 * len(shapes)  # exp_avg + exp_avg_sq, one step counter per tensor
    return {"params": params, "grads": params, "optimizer": optimizer, "total": 2 * params + optimizer}
