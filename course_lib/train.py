"""The training loop every lesson builds on, and ``python -m course_lib.train``.

One ``Trainer`` runs single-process (``python -m course_lib.train``) and under DDP
(``torchrun --nproc_per_node=N -m course_lib.train``) with the same code; ``--strategy fsdp``
shards parameters, gradients and optimizer state instead (FSDP2, ``course_lib.fsdp``) and
writes sharded checkpoints (DCP) that resume on another number of processes. One optimizer step:

    1. for each of ``accumulation_steps`` micro-batches: forward under autocast, loss / k,
       backward (DDP all-reduce / FSDP reduce-scatter of gradients only on the last micro-batch)
    2. unscale (fp16 GradScaler), measure the global grad-norm, clip it, NaN guard
    3. optimizer step (skipped by the GradScaler on inf/NaN gradients), zero grads
    4. scheduler step (not on a skipped step), log, evaluate, checkpoint

Everything a run needs to continue exactly is in ``state_dict()``: model, optimizer,
scheduler, GradScaler, step, RNG states (python, numpy, torch CPU/CUDA, every rank) and the
data position. On start, the latest good checkpoint in ``out_dir`` is loaded automatically,
and a resumed run ends bitwise-identical to an uninterrupted one on CPU.

Extension points are plain callbacks (``Callback``), no framework. The resume policy (what a
run may continue, and what changing a setting on resume does) is in ``course_lib.resume``;
``main()`` is ``python -m course_lib.train``, its flags generated from the config metadata
(``course_lib.cli``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from . import distributed, roofline
from .callbacks import Callback
from .checkpoint import CheckpointError, CheckpointManager, ShardedCheckpointManager, checkpoint_format
from .cli import EXIT_FAILED, EXIT_INPUT, EXIT_NONFINITE, build_parser, configs_from_args, model_kwargs_arg, print_error
from .config import ConfigError, ModelConfig, TrainConfig
from .data import DataError, build_datasets, eval_batches
from .dataloading import DistributedChunkBatches, combined_batch
from .faults import fault_point
from .fsdp import (
    apply_fsdp,
    global_data_position,
    load_training_shards,
    reshard_data_position,
    shards_finite,
    training_shards,
)
from .fsio import atomic_write_text
from .monitor import MetricsLogError, NonFiniteError, StepLogger, check_finite
from .protocol import ModelSpec, build_model, num_parameters
from .resume import ConfigMismatchError, change_warnings, check_checkpoint_kind, check_resumable, reshards
from .schedule import build_scheduler
from .sft import build_sft_datasets, resolve_start
from .tokenizer import same_tokenizer, tokenizer_name
from .trackers import TrackerUnavailable, make_tracker


class ReplayDDPBatches(Callback):
    """Make a single-process run see what an N-rank DDP run sees, step by step.

    Replaces each batch by ``dataloading.combined_batch``: the concatenation of the batches
    every rank (and every accumulation micro-step) of the DDP run reads at this optimizer
    step. Run the single process with ``accumulation_steps=1``: its one batch is the whole
    DDP step. Used by the DDP-equivalence tests and notebook 4.1.2.
    """

    def __init__(self, world_size: int, micro_steps: int = 1, batch_size: int | None = None) -> None:
        self.world_size, self.micro_steps, self.batch_size = world_size, micro_steps, batch_size

    def on_batch(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor):
        c = trainer.cfg
        return combined_batch(
            trainer.train_data.tokens,
            c.seq_len,
            self.batch_size or c.batch_size,
            c.seed,
            self.world_size,
            trainer.step,
            self.micro_steps,
        )


# ------------------------------------------------------------------------------------------
# RNG state: part of the training state
# ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """All RNG states as plain containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def autocast_context(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def grad_global_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over all gradients together (parameters without a gradient are skipped)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms), as in nanoGPT."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


RUN_ARTEFACTS = ("checkpoints", "metrics.jsonl", "tb", "config.json", "data_manifest.json", "tokenizer.json")


def move_previous_run(out_dir: str | Path) -> Path | None:
    """Move an earlier run's checkpoints and logs out of the way; return where they went.

    Used when a run starts over (``resume=False``) in a folder that already holds checkpoints.
    Rotation keeps the highest step numbers, so a new, shorter run sharing the folder with an
    old one would see its own checkpoints deleted right after writing them, while the old
    run's stayed "latest". Nothing is deleted here: the old files are renamed into
    ``out_dir/previous-<UTC time>/`` (a rename on the same disk: instant, no copy).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = out_dir / f"previous-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = out_dir / f"previous-{stamp}-{n}"
    dest.mkdir()
    for name in RUN_ARTEFACTS:
        if (out_dir / name).exists():
            (out_dir / name).rename(dest / name)
    return dest


def _write_json(path: Path, obj) -> None:
    """A run's JSON file, written atomically; a failure names the file (``OSError.filename``)."""
    try:
        atomic_write_text(path, json.dumps(obj, indent=2))
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def _lr_at(scheduler) -> float:
    """The lr the scheduler gives the next optimizer step (without stepping it)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)


class Trainer:
    """Builds model, optimizer, schedule, data, checkpoints and logging from two configs."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        callbacks: Sequence[Callback] = (),
        tokenizer=None,
        console: bool = True,
        save_checkpoints: bool = True,
    ) -> None:
        # --init / --tokenizer (course_lib.sft.resolve_start): a fine-tune takes its model config,
        # tokenizer and starting weights from the model it starts from
        model_cfg, tokenizer, self._init_state = resolve_start(cfg, model_cfg, tokenizer)
        self.model_cfg, self.cfg = model_cfg, cfg
        self.callbacks = list(callbacks)
        self.tokenizer = tokenizer
        self._check_sizes()
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.out_dir)
        self.console = console and self.is_main
        if cfg.dtype == "fp16" and self.device.type != "cuda" and self.console:
            # informational, so it goes with the console log (stdout), not stderr
            print("[train] note: fp16 on CPU is slow and meant for demonstration; bf16 is the CPU choice", flush=True)
        self.sharded = cfg.strategy == "fsdp"  # FSDP: sharded model state and sharded checkpoints
        self._build_model()  # 1. model, optimizer, schedule, scaler (same seed on every rank)
        self._build_data()  # 2. data: sharded by rank here, by worker inside the DataLoader

        # ---- 3. state counters, checkpoints, resume ----
        self.step = 0  # optimizer steps finished
        self.batches_consumed = 0  # micro-batches taken from the data stream (this rank)
        self.skipped_steps = 0  # GradScaler skips (fp16)
        self.history: list[dict] = []
        self.resumed_from: Path | None = None
        self.previous_run: Path | None = None  # where --no-resume moved an earlier run's files
        self._resume_changes: dict = {}
        manager = ShardedCheckpointManager if self.sharded else CheckpointManager
        self.ckpt = (
            manager(self.out_dir, keep_last=cfg.keep_last, interval=cfg.ckpt_interval, verbose=self.is_main)
            if save_checkpoints or cfg.resume
            else None
        )
        self.save_checkpoints = save_checkpoints
        if cfg.resume and self.ckpt is not None:
            self.try_resume()
        elif save_checkpoints and self.is_main:
            self._move_previous_run()

        # ---- 4. DDP wrap (after loading, so every rank starts from the same weights) ----
        self.ddp: DDP | None = None
        if self.dist.enabled and not self.sharded:
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.logger: StepLogger | None = None
        self._data_iter = None
        self._batch_kwargs: dict = {}

    def _check_sizes(self) -> None:
        """The tokenizer and the sequence length fit the model, or a ``ConfigError`` naming the field."""
        model_cfg, cfg = self.model_cfg, self.cfg
        if self.tokenizer.vocab_size > model_cfg.vocab_size:
            raise ConfigError(
                f"ModelConfig.vocab_size: {model_cfg.vocab_size} is smaller than the tokenizer's "
                f"vocab_size={self.tokenizer.vocab_size}; set vocab_size >= {self.tokenizer.vocab_size}"
            )
        if cfg.seq_len > model_cfg.max_seq_len:
            raise ConfigError(
                f"TrainConfig.seq_len: {cfg.seq_len} exceeds ModelConfig.max_seq_len="
                f"{model_cfg.max_seq_len}; lower seq_len or raise max_seq_len"
            )

    def _build_model(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        # activation checkpointing first (a per-block wrapper inside forward), then FSDP's sharding
        # model_cfg: a ModelConfig (DIYModel) or a protocol.ModelSpec (a model given by import path)
        self.model = build_model(self.model_cfg, cfg.activation_checkpointing).to(self.device)
        if self.sharded and isinstance(self.model_cfg, ModelSpec):
            raise ConfigError(
                "TrainConfig.strategy: fsdp wraps DIYModel's blocks and is not available for a model "
                "given by --model-class; use --strategy ddp"
            )
        if self._init_state is not None:  # --init: trained weights instead of random ones (before any sharding)
            self.model.load_state_dict(self._init_state)
            self._init_state = None
        if self.sharded and self.dist.enabled:
            # Every rank built the same weights from the same seed; each now keeps only its shard.
            # The optimizer comes after: it must hold the sharded (DTensor) parameters.
            apply_fsdp(self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(
            self.optimizer,
            cfg.schedule,
            cfg.warmup_steps,
            cfg.max_steps,
            min_lr_ratio=cfg.min_lr / cfg.lr,
            decay_fraction=cfg.decay_fraction,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.dtype == "fp16" else None

    def _build_data(self) -> None:
        cfg = self.cfg
        if cfg.task == "sft":  # packed conversations, loss on the assistant's tokens (course_lib.sft)
            self.train_data, self.val_tokens, self.corpus = build_sft_datasets(
                cfg, self.tokenizer, rank=self.dist.rank, world_size=self.dist.world_size
            )
        else:
            self.train_data, self.val_tokens, self.corpus = build_datasets(
                cfg.data,
                cfg.seq_len,
                cfg.batch_size,
                cfg.seed,
                cfg.val_fraction,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                tokenizer=self.tokenizer,
            )
        if cfg.loader == "map":  # same tokens, map-style + DistributedSampler (course_lib.dataloading)
            self.train_data = DistributedChunkBatches.like(self.train_data)

    def _move_previous_run(self) -> None:
        """A fresh run never shares rotation with another run's checkpoints (see move_previous_run)."""
        self.previous_run = move_previous_run(self.out_dir)
        if self.previous_run is not None:
            print(
                f"[train] --no-resume (resume=False): {self.out_dir} already held a run; its checkpoints and logs "
                f"were moved to {self.previous_run} (nothing deleted). This run starts at step 0.",
                file=sys.stderr,
                flush=True,
            )

    # ------------------------------------------------------------------ state
    @property
    def forward_model(self) -> torch.nn.Module:
        return self.ddp if self.ddp is not None else self.model

    @property
    def tokens_per_step(self) -> int:
        c = self.cfg
        return c.batch_size * c.seq_len * c.accumulation_steps * self.dist.world_size

    def _gather_rng(self) -> list:
        mine = get_rng_state()
        if not self.dist.enabled:
            return [mine]
        out: list = [None] * self.dist.world_size
        dist.all_gather_object(out, mine)
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly (rank 0's view plus all ranks' RNG)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self._run_state(),
            "data": self.train_data.state_dict(self.batches_consumed),
        }

    def trainer_state(self) -> dict:
        """``state_dict()`` without model and optimizer, which a sharded checkpoint stores through
        DCP; the data position also in global samples (``fsdp.global_data_position``), so a run
        with another number of ranks continues at the same sample."""
        return {
            **self._run_state(),
            "data": global_data_position(
                self.train_data.state_dict(self.batches_consumed), self.cfg.accumulation_steps
            ),
        }

    def _run_state(self) -> dict:
        """What both checkpoint kinds store besides weights, optimizer and data position."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.train_data.epoch_of(self.batches_consumed),
            "skipped_steps": self.skipped_steps,
            "config": {"model": self.model_cfg.to_dict(), "train": self.cfg.to_dict()},
            "rng": self._gather_rng(),
            "world_size": self.dist.world_size,
            "tokenizer": self.tokenizer.describe(),
        }

    def load_state_dict(self, state: dict) -> None:
        if "model" in state:  # a sharded checkpoint's trainer state has none: DCP loaded them
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        data = state["data"]
        if reshards(state, self.dist.world_size, self.sharded):
            c = self.cfg
            data = reshard_data_position(data, c.batch_size, self.dist.world_size, self.dist.rank, c.accumulation_steps)
        self.batches_consumed = int(data["batches_consumed"])
        self.train_data.load_state_dict(data)
        rngs = state["rng"]
        # A rank the saving run did not have (resharded 1 -> 2) takes rank 0's RNG state: the
        # model's randomness (dropout) then repeats across ranks; with dropout 0 nothing uses it.
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self._data_iter = None

    def _validate_checkpoint(self, state: dict) -> None:
        """May this run continue ``state``? (``resume.check_resumable``; remembers what changed)."""
        self._resume_changes = check_resumable(
            state, self.model_cfg.to_dict(), self.cfg, self.dist.world_size, self.dist.rank, self.out_dir
        )
        saved_tok = state.get("tokenizer")
        if saved_tok is not None and not same_tokenizer(saved_tok, self.tokenizer.describe()):
            raise ConfigMismatchError(
                f"{self.out_dir}: its checkpoint was trained with tokenizer {tokenizer_name(saved_tok)} but this run "
                f"has {tokenizer_name(self.tokenizer.describe())}; resume with the run's --tokenizer or use a new out_dir"
            )

    def _load_latest_sharded(self):
        """Latest good sharded checkpoint: trainer state verified and validated first, then DCP
        loads each rank's slices of model and optimizer (resharded if the world size changed)."""
        holder: dict = {}

        def shards_fn() -> dict:
            holder["shards"] = training_shards(self.model, self.optimizer)
            return holder["shards"]

        found = self.ckpt.load_latest(shards_fn=shards_fn, map_location=self.device, validate=self._validate_checkpoint)
        if found is None and holder:
            # get_state_dict created optimizer state and DCP may have filled part of the model
            raise CheckpointError(
                f"{self.ckpt.dir}: no sharded checkpoint could be loaded (see the warnings "
                "above); this run's model may hold part of one, so it stops here. Use a new "
                "out_dir, or --no-resume, which moves these checkpoints aside"
            )
        if found is not None:
            load_training_shards(self.model, self.optimizer, holder["shards"])
        return found

    def try_resume(self) -> Path | None:
        latest = self.ckpt.latest()
        check_checkpoint_kind(
            checkpoint_format(latest) if latest is not None else None, self.cfg.strategy, self.out_dir
        )
        if self.sharded:
            found = self._load_latest_sharded()
        else:
            found = self.ckpt.load_latest(map_location=self.device, validate=self._validate_checkpoint)
        if found is None:
            return None
        state, path = found
        self.load_state_dict(state)
        self.resumed_from = path
        lr_before = self.optimizer.param_groups[0]["lr"]  # the saved lr of the next step
        if self.console or self.is_main:
            print(f"[train] resumed from {path} at step {self.step}", flush=True)
        if self.is_main:
            for line in change_warnings(self._resume_changes, self.step, lr_before, _lr_at(self.scheduler)):
                print(line, file=sys.stderr, flush=True)
        if self.is_main and self.save_checkpoints and path == self.ckpt.latest():
            # a run killed between the rename and the rotation of a save left keep_last + 1
            self.ckpt.rotate()
        return path

    # ------------------------------------------------------------------ data
    def _make_iter(self):
        c = self.cfg
        if isinstance(self.train_data, DistributedChunkBatches):
            return self.train_data.iterate(
                num_workers=c.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(c.seed),
            )
        loader = DataLoader(
            self.train_data,
            batch_size=None,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # a private generator: creating worker seeds must not consume the
            # global torch RNG, or a resumed run would drift from an uninterrupted one
            generator=torch.Generator().manual_seed(c.seed),
        )
        return iter(loader)

    def next_batch(self):
        if self._data_iter is None:
            self._data_iter = self._make_iter()
        batch = next(self._data_iter)
        x, y = batch[0], batch[1]
        # an SFT batch also carries document ids: packed conversations attend only within themselves
        self._batch_kwargs = {"document_ids": batch[2].to(self.device)} if len(batch) > 2 else {}
        self.batches_consumed += 1
        for cb in self.callbacks:
            x, y = cb.on_batch(self, x, y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimizer step over ``accumulation_steps`` micro-batches.

        Checkpoints are written only between optimizer steps, never inside an accumulation
        cycle: the partial gradient sum lives only in ``.grad`` and is not saved. A run killed
        in the middle of a cycle therefore resumes at the *start* of that cycle (the latest
        checkpoint's step), re-reads the same micro-batches (the data position is saved in
        micro-batches, always a multiple of ``accumulation_steps`` at a checkpoint) and ends
        bitwise-identical on CPU (tests/unit/test_accumulation.py).
        """
        c = self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        loss_acc = self._accumulate_gradients()
        for cb in self.callbacks:
            cb.on_after_backward(self)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip real gradients, not scaled ones
        grad_norm_t = self._clip_and_measure()
        if self.dist.enabled:  # the global mean loss (grad-norm is already global: DDP all-reduce / FSDP norm)
            dist.all_reduce(loss_acc, op=dist.ReduceOp.SUM)
            loss_acc /= self.dist.world_size
        # This is a CPU-GPU sync point, kept on purpose and only once per optimizer step: the NaN
        # guard must see loss and grad-norm *before* optimizer.step() would write NaN into the
        # weights (and into the next checkpoint). One .tolist() fetches both numbers together.
        loss_sum, grad_norm = torch.stack([loss_acc, grad_norm_t.detach().float().to(loss_acc.device)]).tolist()
        # (fp16: the GradScaler handles non-finite gradients itself by skipping the step)
        if c.stop_on_nonfinite and not (
            math.isfinite(loss_sum) and (self.scaler is not None or math.isfinite(grad_norm))
        ):
            self.optimizer.zero_grad(set_to_none=True)
            check_finite(self.step + 1, loss=loss_sum, grad_norm=grad_norm if self.scaler is None else None)
        skipped = self._optimizer_step()
        self.step += 1
        return {
            "step": self.step,
            "loss": loss_sum,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": skipped,
            "skipped_steps": self.skipped_steps,
            "epoch": self.train_data.epoch_of(self.batches_consumed),
        }

    def _accumulate_gradients(self) -> torch.Tensor:
        """Forward + backward over the step's micro-batches; the mean loss, still on the device."""
        c, model = self.cfg, self.forward_model
        model.train()
        k = c.accumulation_steps
        loss_acc = torch.zeros((), device=self.device)  # stays on the device: no sync per micro-batch
        for micro in range(k):
            x, y = self.next_batch()
            if self.ddp is not None:
                # All-reduce gradients only on the last micro-batch. Setting the flag (as nanoGPT
                # does) instead of `with ddp.no_sync():` keeps one code path for every micro-step.
                self.ddp.require_backward_grad_sync = micro == k - 1
            elif self.sharded and self.dist.enabled:
                # FSDP's public switch for the same thing: no reduce-scatter until the last
                # micro-batch (the unsharded gradients accumulate locally in between)
                self.model.set_requires_gradient_sync(micro == k - 1)
            with autocast_context(self.device, c.dtype):
                out = model(x, targets=y, **self._batch_kwargs)
            scaled = out.loss / k  # mean over the k micro-batches = one big batch
            loss_acc += scaled.detach().float()
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss_acc

    def _clip_and_measure(self) -> torch.Tensor:
        """Clip to ``grad_clip`` (if > 0) and return the global gradient norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.grad_clip > 0:
            grad_norm_t = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        elif self.sharded and self.dist.enabled:
            grad_norm_t = torch.nn.utils.get_total_norm([p.grad for p in params])
        else:
            grad_norm_t = grad_global_norm(params)
        if isinstance(grad_norm_t, DTensor):
            # FSDP: the norm of sharded gradients is a DTensor; computing it all-reduced the
            # squared shard norms, so the full value is the global norm, the same on every rank
            grad_norm_t = grad_norm_t.full_tensor()
        return grad_norm_t

    def _optimizer_step(self) -> bool:
        """Optimizer step (fp16: through the GradScaler, which skips it on inf/NaN gradients),
        zero the gradients, step the schedule unless skipped. Returns whether it was skipped."""
        skipped = False
        if self.scaler is not None:
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips the step if grads hold inf/NaN
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale_before
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += 1
        else:
            self.scheduler.step()
        return skipped

    @torch.no_grad()
    def evaluate(self) -> float | None:
        c = self.cfg
        self.model.eval()
        losses = []
        if c.task == "sft":  # held-out conversations, packed: (x, y, document_ids)
            batches = self.val_tokens.batches(c.batch_size, c.eval_batches) if self.val_tokens is not None else []
        else:
            batches = eval_batches(self.val_tokens, c.seq_len, c.batch_size, c.eval_batches)
        for x, y, *doc in batches:
            kw = {"document_ids": doc[0].to(self.device)} if doc else {}
            with autocast_context(self.device, c.dtype):
                losses.append(float(self.model(x.to(self.device), targets=y.to(self.device), **kw).loss))
        self.model.train()
        return sum(losses) / len(losses) if losses else None

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> Path | None:
        if self.sharded:
            return self._save_sharded()
        state = self.state_dict()  # every rank joins the RNG gather
        path = None
        if self.is_main and self.save_checkpoints:
            floats = [(name, t) for name, t in state["model"].items() if t.is_floating_point()]
            # one device -> host read for all tensors (a bool() per tensor would sync once each on CUDA)
            if floats and not bool(torch.stack([torch.isfinite(t).all() for _, t in floats]).all()):
                name = next(name for name, t in floats if not torch.isfinite(t).all())
                raise NonFiniteError(f"refusing to save step {self.step}: parameter {name} is not finite")
            path = self.ckpt.save(self.step, state)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        return path

    def _save_sharded(self) -> Path | None:
        """Every rank writes its shard (DCP); rank 0 adds the trainer state and the marker."""
        shards = training_shards(self.model, self.optimizer)
        finite = torch.tensor([1.0 if shards_finite(shards) else 0.0], device=self.device)
        if self.dist.enabled:  # all ranks must agree, or one would wait in the save forever
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteError(f"refusing to save step {self.step}: a parameter shard is not finite")
        trainer_state = self.trainer_state()  # every rank joins the RNG gather
        if not self.save_checkpoints:
            return None
        path = self.ckpt.save(self.step, shards, trainer_state)
        if self.is_main:
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict]:
        c = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.out_dir / "config.json", {"model": self.model_cfg.to_dict(), "train": c.to_dict()})
            _write_json(self.out_dir / "data_manifest.json", self.corpus.manifest())
            if hasattr(self.tokenizer, "save"):  # a BPE travels with the run (the checkpoints carry it too)
                self.tokenizer.save(self.out_dir / "tokenizer.json")
            # MFU: FLOPs/token (6N + attention) over the peak FLOP/s (configured, or measured once)
            peak = c.peak_flops or roofline.measured_peak_flops(
                self.device, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.dtype, torch.float32)
            )
            self.logger = StepLogger(
                self.out_dir,
                c.max_steps,
                c.log_interval,
                tensorboard=c.tensorboard,
                console=self.console,
                flops_per_token=(
                    roofline.flops_per_token(self.model_cfg, c.seq_len)
                    if isinstance(self.model_cfg, ModelConfig)
                    else None
                ),
                peak_flops=peak * self.dist.world_size,
            )
            self.logger.start(self.step)
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.step < c.max_steps:
                metrics = self.train_step()
                if self.logger is not None:
                    self.logger.count_tokens(self.tokens_per_step)
                if self.step % c.eval_interval == 0 or self.step == c.max_steps:
                    metrics["eval_loss"] = self.evaluate()
                self.history.append(metrics)
                if self.logger is not None:
                    self.logger.log(self.step, {k: v for k, v in metrics.items() if k != "step"})
                for cb in self.callbacks:
                    cb.on_step_end(self, metrics)
                if (
                    self.save_checkpoints
                    and self.ckpt is not None
                    and (self.ckpt.should_save(self.step) or self.step == c.max_steps)
                ):
                    self.save_checkpoint()
                fault_point("after_step", self.step, self.dist.rank)  # tests/demos only: COURSE_FAULT
        finally:
            if self.logger is not None:
                self.logger.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history


# ------------------------------------------------------------------------------------------
# python -m course_lib.train
# ------------------------------------------------------------------------------------------
INPUT_ERRORS = (ConfigError, DataError, ConfigMismatchError)
RUN_FAILURES = (CheckpointError, MetricsLogError, OSError)  # one line, exit 1


def _report_start(trainer: Trainer) -> None:
    c = trainer.cfg
    print(
        f"[train] {num_parameters(trainer.model):,} parameters | device {trainer.device} | "
        f"world size {trainer.dist.world_size} | strategy {c.strategy} | data {trainer.corpus.source} "
        f"({trainer.corpus.num_chars:,} chars, sha256 {trainer.corpus.sha256[:12]})",
        flush=True,
    )


def _report_end(trainer: Trainer, history: list[dict], seconds: float) -> None:
    c = trainer.cfg
    if history:
        first, last = history[0]["loss"], history[-1]["loss"]
        ev = [h["eval_loss"] for h in history if h.get("eval_loss") is not None]
        print(
            f"[train] done in {seconds:.1f}s: loss {first:.3f} -> {last:.3f}"
            + (f", eval loss {ev[-1]:.3f}" if ev else ""),
            flush=True,
        )
    else:
        print(f"[train] nothing to do: already at step {trainer.step} of {c.max_steps}")
    if c.task == "sft":  # a chat model: talk to it through the chat template, not a raw prompt
        hint = (
            f"python -m course_lib.export {c.out_dir} {Path(c.out_dir) / 'export'} && "
            f"python -m course_lib.serve --model {Path(c.out_dir) / 'export'}  "
            "(then POST /v1/chat/completions with messages, e.g. the openai client's chat.completions.create)"
        )
    else:
        hint = f"python -m course_lib.generate --run {c.out_dir} --prompt 'def '"
    print(f"[train] checkpoints in {Path(c.out_dir) / 'checkpoints'}; try: {hint}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.train``: exit 0, or one ``error:`` line and 2 (input), 3 (NaN/Inf), 1 (other)."""
    args = build_parser().parse_args(argv)
    try:
        model_cfg, train_cfg = configs_from_args(args)
    except ConfigError as e:
        print_error(e)
        return EXIT_INPUT
    try:
        if args.model_class:  # your own model, by import path (course_lib/protocol.py)
            model_cfg = ModelSpec(args.model_class, model_kwargs_arg(args.model_kwargs))
        callbacks = [make_tracker(n, mode=args.tracker_mode, project=args.tracker_project) for n in args.tracker or []]
    except (ConfigError, TrackerUnavailable) as e:
        print_error(e)
        return EXIT_INPUT
    if args.print_config:
        print(json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}, indent=2))
        return 0
    ok = False
    try:
        trainer = Trainer(model_cfg, train_cfg, callbacks=callbacks)
        if trainer.is_main:
            _report_start(trainer)
        t0 = time.perf_counter()
        history = trainer.fit()
        if trainer.is_main:
            _report_end(trainer, history, time.perf_counter() - t0)
        ok = True
    except INPUT_ERRORS as e:
        print_error(e)
        return EXIT_INPUT
    except NonFiniteError as e:
        print_error(e)
        return EXIT_NONFINITE
    except RUN_FAILURES as e:
        print_error(e)
        return EXIT_FAILED
    finally:
        # a barrier before leaving the group on a normal end; none after an error (see cleanup)
        distributed.cleanup(synchronize=ok)
    return 0


if __name__ == "__main__":
    # `python -m course_lib.train` / `torchrun ... -m course_lib.train`
    code = main()
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose run is complete (checkpoint fsynced, logs closed, process group
        # synchronised and destroyed) can still abort in C++ teardown at interpreter exit with
        # torch 2.13 + gloo ("terminate called without an active exception", SIGABRT), and torchrun
        # then reports the finished run as failed. Nothing is left to clean up, so leave without
        # running those destructors; the exit code is still the real one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
