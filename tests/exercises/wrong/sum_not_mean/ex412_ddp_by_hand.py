"""WRONG on purpose (tests/test_grader_strength.py): sums the gradients and never divides by the world size."""

import torch
import torch.distributed as dist


def average_gradients(model: torch.nn.Module) -> None:
    _world = dist.get_world_size()  # read, then (wrongly) never used
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # every rank now holds the sum


def install_grad_hooks(model: torch.nn.Module) -> list:
    _world = dist.get_world_size()  # read, then (wrongly) never used

    def hook(p: torch.Tensor) -> None:  # runs once p.grad is complete
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    return [p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad]
