"""参考答案 ex405：参数 + 梯度 + 优化器状态。"""

import torch

STATES = {"adamw": 2, "sgd_momentum": 1, "sgd": 0}


def static_training_bytes(model: torch.nn.Module, optimizer: str = "adamw") -> dict:
    params = grads = 0
    seen = set()
    for p in model.parameters():  # parameters() already skips shared ones; be explicit
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * p.element_size()
        params += n
        if p.requires_grad:
            grads += n
    opt = STATES[optimizer] * grads
    return {"params": params, "grads": grads, "optimizer_state": opt, "total": params + grads + opt}
