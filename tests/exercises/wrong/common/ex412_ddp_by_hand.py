"""WRONG on purpose (tests/test_grader_strength.py): average_gradients never communicates (each rank keeps its own gradient)."""

import torch
import torch.distributed as dist


def average_gradients(model: torch.nn.Module) -> None:
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(world).div_(world)  # looks busy, never talks to the other rank


def install_grad_hooks(model: torch.nn.Module) -> list:
    world = dist.get_world_size()

    def hook(p: torch.Tensor) -> None:  # runs once p.grad is complete
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad]
