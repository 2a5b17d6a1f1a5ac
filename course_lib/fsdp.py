"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under DDP every rank holds the whole model, the whole gradient and the whole optimizer
state, and gradients are all-reduced. Under FSDP each rank holds ``1/world_size`` of every
parameter (a ``DTensor`` sharded on dim 0), of its gradient and of its AdamW moments:

* forward: before a block runs, its parameters are **all-gathered** from every rank, used,
  and (``reshard_after_forward=True``) freed again;
* backward: the block is all-gathered once more, its gradient computed, and the gradient
  **reduce-scattered**: each rank receives the sum of its own shard only;
* the optimizer then updates local shards only, so its state is sharded too.

``apply_fsdp(model)`` shards each transformer ``Block`` as its own unit (one all-gather per
block, so only one block is ever whole at a time) and then the root, which keeps the
embedding, the final norm and the (tied) output projection. Build the optimizer *after*
``apply_fsdp``: the parameters are replaced by DTensors.

``rank_state_bytes(model, optimizer)`` measures what this rank really holds.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .config import STRATEGIES  # noqa: F401  (re-exported: the strategies TrainConfig accepts)



def _blocks(model: nn.Module) -> list:
    """The repeated transformer blocks (``model.layers``) that become one FSDP unit each."""
    layers = getattr(model, "layers", None)
    return list(layers) if layers is not None else []


def apply_fsdp(model: nn.Module, mesh=None, reshard_after_forward: bool = True,
               mp_policy: Optional[MixedPrecisionPolicy] = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2 and return it.

    ``mesh``: a 1-D ``DeviceMesh`` (default: every rank of the default process group).
    ``reshard_after_forward``: free each block's gathered parameters after its forward (less
    memory, one more all-gather in backward), as ZeRO-3; ``False`` keeps them until backward
    (ZeRO-2-like: more memory, fewer collectives). The root is never resharded after forward
    (torchtitan does the same: backward needs it first).
    ``mp_policy``: an optional ``MixedPrecisionPolicy`` (e.g. bf16 parameters for compute,
    fp32 gradient reduction); ``None`` computes in the parameters' dtype.
    """
    kw = {"mesh": mesh}
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    for block in _blocks(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kw)
    fully_shard(model, reshard_after_forward=False, **kw)
    return model


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def rank_state_bytes(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """Bytes of model state that *this rank* holds, measured from the tensors themselves.

    Returns ``{"params": ..., "grads": ..., "optimizer": ..., "total": ...}``: parameters and
    gradients count their local shard (``DTensor.to_local()``) under FSDP and the whole tensor
    otherwise (DDP / one process); ``optimizer`` sums every tensor in the optimizer's state
    (AdamW: ``exp_avg``, ``exp_avg_sq`` and the step counter). A tied parameter counts once.
    Gradients are ``0`` after ``zero_grad(set_to_none=True)``.
    """
    seen, params, grads = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        loc = _local(p)
        params += loc.numel() * loc.element_size()
        if p.grad is not None:
            g = _local(p.grad)
            grads += g.numel() * g.element_size()
    opt = 0
    if optimizer is not None:
        for st in optimizer.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    loc = _local(v)
                    opt += loc.numel() * loc.element_size()
    return {"params": params, "grads": grads, "optimizer": opt, "total": params + grads + opt}
