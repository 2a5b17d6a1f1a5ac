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

Checkpoints of FSDP runs are sharded (``checkpoint.ShardedCheckpointManager``, DCP): every
rank writes its own slice. ``training_shards`` is what goes in them, ``global_data_position`` /
``reshard_data_position`` make the data position independent of the number of ranks, and
``load_full_model_state`` reads the whole model back offline (no process group) for export.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .checkpoint import CheckpointError, ShardedCheckpointManager
from .config import STRATEGIES, ConfigError, ModelConfig  # noqa: F401  (STRATEGIES re-exported)
from .data import DataError
from .model import DIYModel


def _blocks(model: nn.Module) -> list:
    """The repeated transformer blocks (``model.layers``) that become one FSDP unit each."""
    layers = getattr(model, "layers", None)
    return list(layers) if layers is not None else []


def apply_fsdp(
    model: nn.Module, mesh=None, reshard_after_forward: bool = True, mp_policy: MixedPrecisionPolicy | None = None
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 and return it.

    ``mesh``: a 1-D ``DeviceMesh`` (default: every rank of the default process group).
    ``reshard_after_forward``: free each block's gathered parameters after its forward (less
    memory, one more all-gather in backward), as ZeRO-3; ``False`` keeps them until backward
    (ZeRO-2-like: more memory, fewer collectives). The root keeps its parameters after forward
    (FSDP's own heuristic for the root: backward all-gathers them again immediately).
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


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def rank_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
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


# ------------------------------------------------------------------------------------------
# What a sharded checkpoint holds
# ------------------------------------------------------------------------------------------
def training_shards(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``{"model": ..., "optimizer": ...}`` keyed by parameter names (FQNs), not by the
    optimizer's integer ids: under FSDP the values are DTensors (this rank's shard), in one
    process plain tensors. DCP saves it, and loads it into the same structure built on any
    number of ranks. An optimizer that has not stepped yet gets its state created here
    (``get_state_dict`` initialises it), so a fresh run can load into it."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def load_training_shards(model: nn.Module, optimizer: torch.optim.Optimizer, shards: dict) -> None:
    """Put a loaded ``training_shards`` dict back into the model and the optimizer."""
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])


def shards_finite(shards: dict) -> bool:
    """True when every floating-point model tensor in this rank's shard is finite."""
    return all(
        bool(torch.isfinite(_local(t)).all())
        for t in shards["model"].values()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


# ------------------------------------------------------------------------------------------
# The data position in global samples: independent of the number of ranks
# ------------------------------------------------------------------------------------------
def global_data_position(data_state: dict, accumulation_steps: int) -> dict:
    """Add the position in *global* terms to a rank's saved data position.

    Both loaders (``data.StreamingTokenDataset`` and ``DistributedSampler`` in
    ``dataloading.DistributedChunkBatches``) give rank ``r`` of ``W`` the samples ``perm[r::W]``
    of one permutation per epoch that does not depend on ``W``, in batches of ``B``; together
    the ranks' batch ``j`` is exactly ``perm[j*B*W : (j+1)*B*W]``, and an epoch has
    ``n // (B*W)`` such batches. So the global order depends only on ``B*W``, the samples one
    micro-step takes from the stream across all ranks, and the position is
    ``samples_consumed = batches_consumed * B * W``.
    """
    b, w = int(data_state["batch_size"]), int(data_state["world_size"])
    return dict(
        data_state,
        global_micro_batch=b * w,
        samples_consumed=int(data_state["batches_consumed"]) * b * w,
        accumulation_steps=int(accumulation_steps),
    )


def reshard_data_position(saved: dict, batch_size: int, world_size: int, rank: int, accumulation_steps: int) -> dict:
    """A saved data position rewritten for a run with ``world_size`` ranks of ``batch_size``.

    Exact (no sample seen twice, none skipped) when the new run takes as many samples per
    micro-step across ranks as the old one (``batch_size * world_size`` unchanged) with the
    same ``accumulation_steps``: e.g. 2 ranks x 4 -> 1 process x 8. Anything else is refused
    with one line that says which batch size to use.
    """
    if "samples_consumed" not in saved:
        raise DataError(
            "the checkpoint's data position has no global sample count (written by an older "
            "version?); resume with the world size it was written with"
        )
    g_old, g_new = int(saved["global_micro_batch"]), batch_size * world_size
    if g_old != g_new:
        hint = (
            f"use --batch-size {g_old // world_size}"
            if g_old % world_size == 0
            else f"use a number of processes that divides {g_old}"
        )
        raise DataError(
            f"TrainConfig.batch_size: the checkpoint was written by {saved['world_size']} rank(s) x "
            f"batch_size {saved['batch_size']} = {g_old} samples per micro-step; this run has "
            f"{world_size} x {batch_size} = {g_new}, so the data order (and the loss curve) would "
            f"change; {hint}"
        )
    acc_old = int(saved.get("accumulation_steps", accumulation_steps))
    if acc_old != accumulation_steps:
        raise DataError(
            f"TrainConfig.accumulation_steps: the checkpoint used {acc_old}, this run {accumulation_steps}; "
            f"resume with --accumulation-steps {acc_old}"
        )
    out = dict(
        saved,
        batch_size=batch_size,
        world_size=world_size,
        rank=rank,
        batches_consumed=int(saved["samples_consumed"]) // g_new,
    )
    return out


# ------------------------------------------------------------------------------------------
# Offline: the whole model from a sharded checkpoint (no process group, any world size)
# ------------------------------------------------------------------------------------------
def load_full_model_state(folder, map_location="cpu"):
    """``(model, trainer_state)`` from one sharded checkpoint folder, in this one process.

    The model is rebuilt from the config stored in ``trainer.pt``, and DCP fills its plain
    (unsharded) tensors from however many shards were written: the offline counterpart of
    ``get_model_state_dict(..., full_state_dict=True)``, needing no process group.
    """
    mgr = ShardedCheckpointManager(Path(folder).parent.parent, verbose=False)
    state = mgr.load(folder, map_location)
    try:
        model = DIYModel(ModelConfig.from_dict(state["config"]["model"]))
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{Path(folder) / 'trainer.pt'}: no usable model config ({e})") from None
    target = {"model": model.state_dict()}
    mgr.load_shards(folder, target)
    model.load_state_dict(target["model"])
    return model, state
