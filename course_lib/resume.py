"""The resume policy: may this run continue that checkpoint, and what does continuing change?

Pure functions over plain values (a checkpoint's trainer state, this run's configs, the world
size), so the policy can be read and tested without building a model. ``Trainer.try_resume``
calls them in this order:

1. ``check_checkpoint_kind``: an fsdp run cannot continue a ddp (single-file) checkpoint, nor
   the reverse;
2. ``check_resumable`` on the newest checkpoint's state: the model config must match, the
   loader must match, the world size must match (or, for a sharded checkpoint, the data position
   must map onto the new world size: ``reshards``); it returns the changed settings;
3. ``change_warnings``: what to tell the learner about those changes (the run will not match an
   uninterrupted one; fields that shape the lr schedule say how the lr jumps).

Which fields are free to change, which shape the schedule and which must match comes from the
fields' ``resume`` metadata in config.py: the one place a setting is described.
"""

from __future__ import annotations

import os

from .checkpoint import FORMAT as SINGLE_FILE_FORMAT
from .checkpoint import SHARDED_FORMAT
from .config import RESUME_FREE, RESUME_SCHEDULE, TrainConfig, fields_by_resume
from .data import DataError
from .fsdp import reshard_data_position


class ConfigMismatchError(RuntimeError):
    """A checkpoint in out_dir was made with a different model: refuse rather than overwrite it."""


def reshards(state: dict, world_size: int, sharded: bool) -> bool:
    """True when a sharded checkpoint is resumed on another number of ranks: DCP reshards model
    and optimizer, and the data position is mapped onto the new ranks (``fsdp.reshard_data_position``)."""
    return sharded and state.get("world_size", 1) != world_size


def check_checkpoint_kind(found_format: str | None, strategy: str, out_dir: str | os.PathLike) -> None:
    """Refuse to continue a checkpoint of the other kind (ddp single-file vs fsdp sharded) rather
    than start over in that folder, whose rotation would then delete them."""
    want = SHARDED_FORMAT if strategy == "fsdp" else SINGLE_FILE_FORMAT
    if found_format in (SHARDED_FORMAT, SINGLE_FILE_FORMAT) and found_format != want:
        other = "fsdp" if found_format == SHARDED_FORMAT else "ddp"
        raise ConfigMismatchError(
            f"{out_dir}: its checkpoints were written with --strategy {other} but this run has "
            f"--strategy {strategy}; resume with --strategy {other}, or use a new out_dir"
        )


def _norm(x):
    """JSON/pickle may give a list where the config holds a tuple."""
    return list(x) if isinstance(x, (list, tuple)) else x


def check_resumable(
    state: dict, model_cfg: dict, train_cfg: TrainConfig, world_size: int, rank: int, out_dir: str | os.PathLike
) -> dict:
    """Raise ``ConfigMismatchError`` if this run cannot continue the checkpoint ``state``;
    otherwise return the settings that differ, ``{field: (saved, now)}`` (fields whose resume
    policy is "free" are left out)."""
    saved = state.get("config", {}).get("model")
    if saved != model_cfg:
        diff = sorted(k for k in set(saved or {}) | set(model_cfg) if (saved or {}).get(k) != model_cfg.get(k))
        raise ConfigMismatchError(
            f"{out_dir}: its checkpoint was trained with a different model config (fields {diff}); "
            "use a new out_dir, or the checkpoint's model settings, or --no-resume (resume=False), which "
            "starts a new run there and moves the old checkpoints aside without deleting them"
        )
    saved_loader = state.get("data", {}).get("loader", "stream")
    if saved_loader != train_cfg.loader:
        raise ConfigMismatchError(
            f"{out_dir}: its checkpoint was written with loader={saved_loader!r} but this run has "
            f"loader={train_cfg.loader!r}; the two visit samples in different orders. Use the same loader "
            "or a new out_dir"
        )
    resharded = reshards(state, world_size, train_cfg.strategy == "fsdp")
    if resharded:
        # DCP reshards model and optimizer; the data position must map to the same sample
        try:
            reshard_data_position(
                state.get("data", {}), train_cfg.batch_size, world_size, rank, train_cfg.accumulation_steps
            )
        except DataError as e:
            raise ConfigMismatchError(
                f"{out_dir}: cannot resume a checkpoint of {state.get('world_size')} rank(s) on {world_size}: {e}"
            ) from None
    elif state.get("world_size", 1) != world_size:
        raise ConfigMismatchError(
            f"{out_dir}: its checkpoint was written by a run with world_size={state.get('world_size')} "
            f"but this run has {world_size}; the data order depends on it. Resume with the same "
            "number of processes."
        )
    saved_train = state.get("config", {}).get("train", {})
    free = set(fields_by_resume(TrainConfig, RESUME_FREE))
    changes = {
        k: (saved_train[k], v)
        for k, v in train_cfg.to_dict().items()
        if k not in free and k in saved_train and _norm(saved_train[k]) != _norm(v)
    }
    if resharded:
        # batch_size per rank changed with the number of ranks, the global batch did not
        changes.pop("batch_size", None)
    return changes


def change_warnings(changes: dict, step: int, lr_before: float, lr_after: float) -> list[str]:
    """The warnings a resume with changed settings prints (none when nothing changed): the run
    will not match an uninterrupted one, and fields that shape the schedule move the lr."""
    if not changes:
        return []
    desc = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
    out = [
        f"[train] warning: resuming from step {step} with changed settings: {desc}; "
        "the run will not match an uninterrupted one"
    ]
    sched = sorted(set(fields_by_resume(TrainConfig, RESUME_SCHEDULE)) & set(changes))
    if sched:
        out.append(
            f"[train] warning: {sched} shape the learning-rate schedule: from step {step + 1} on the lr "
            f"follows the new schedule ({lr_before:.3g} -> {lr_after:.3g} at step {step + 1}). To continue "
            "the old schedule, resume with the checkpoint's values"
        )
    return out
