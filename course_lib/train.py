"""The training loop every lesson builds on, and ``python -m course_lib.train``.

One ``Trainer`` runs single-process (``python -m course_lib.train``) and under DDP
(``torchrun --nproc_per_node=N -m course_lib.train``) with the same code. One optimizer step:

    1. for each of ``accumulation_steps`` micro-batches: forward under autocast, loss / k,
       backward (DDP gradient all-reduce only on the last micro-batch)
    2. unscale (fp16 GradScaler), measure the global grad-norm, clip it, NaN guard
    3. optimizer step (skipped by the GradScaler on inf/NaN gradients), zero grads
    4. scheduler step (not on a skipped step), log, evaluate, checkpoint

Everything a run needs to continue exactly is in ``state_dict()``: model, optimizer,
scheduler, GradScaler, step, RNG states (python, numpy, torch CPU/CUDA, every rank) and the
data position. On start, the latest good checkpoint in ``out_dir`` is loaded automatically,
and a resumed run ends bitwise-identical to an uninterrupted one on CPU.

Extension points are plain callbacks (``Callback``), no framework.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from . import distributed
from .callbacks import Callback
from .checkpoint import CheckpointManager
from .config import ConfigError, ModelConfig, TrainConfig
from .data import ByteTokenizer, build_datasets, eval_batches
from .dataloading import DistributedChunkBatches, combined_batch
from .model import DIYModel
from .monitor import NonFiniteError, StepLogger, check_finite
from .schedule import build_scheduler


class ConfigMismatchError(RuntimeError):
    """A checkpoint in out_dir was made with a different model: refuse rather than overwrite it."""


class ReplayDDPBatches(Callback):
    """Make a single-process run see what an N-rank DDP run sees, step by step.

    Replaces each batch by ``dataloading.combined_batch``: the concatenation of the batches
    every rank (and every accumulation micro-step) of the DDP run reads at this optimizer
    step. Run the single process with ``accumulation_steps=1``: its one batch is the whole
    DDP step. Used by the DDP-equivalence tests and notebook 4.1.2.
    """

    def __init__(self, world_size: int, micro_steps: int = 1, batch_size: Optional[int] = None) -> None:
        self.world_size, self.micro_steps, self.batch_size = world_size, micro_steps, batch_size

    def on_batch(self, trainer: "Trainer", x: torch.Tensor, y: torch.Tensor):
        c = trainer.cfg
        return combined_batch(trainer.train_data.tokens, c.seq_len, self.batch_size or c.batch_size, c.seed,
                              self.world_size, trainer.step, self.micro_steps)


# ------------------------------------------------------------------------------------------
# RNG state: part of the training state
# ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """All RNG states as plain containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms), as in nanoGPT."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


class Trainer:
    """Builds model, optimizer, schedule, data, checkpoints and logging from two configs."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, callbacks: Sequence[Callback] = (),
                 tokenizer=None, console: bool = True, save_checkpoints: bool = True) -> None:
        self.model_cfg, self.cfg = model_cfg, cfg
        self.callbacks = list(callbacks)
        self.tokenizer = tokenizer or ByteTokenizer()
        if self.tokenizer.vocab_size > model_cfg.vocab_size:
            raise ConfigError(f"ModelConfig.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                              f"vocab_size={self.tokenizer.vocab_size}")
        if cfg.seq_len > model_cfg.max_seq_len:
            raise ConfigError(f"TrainConfig.seq_len={cfg.seq_len} exceeds ModelConfig.max_seq_len={model_cfg.max_seq_len}")
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        if cfg.dtype == "fp16" and self.device.type != "cuda":
            print("[train] note: fp16 on CPU is slow and meant for demonstration; bf16 is the CPU choice",
                  file=sys.stderr)
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.out_dir)
        self.console = console and self.is_main

        # ---- 1. model, optimizer, schedule, scaler (same seed on every rank) ----
        seed_everything(cfg.seed)
        self.model = DIYModel(model_cfg).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps, cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr / cfg.lr, decay_fraction=cfg.decay_fraction)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.dtype == "fp16" else None

        # ---- 2. data: sharded by rank here, by worker inside the DataLoader ----
        self.train_data, self.val_tokens, self.corpus = build_datasets(
            cfg.data, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.val_fraction,
            rank=self.dist.rank, world_size=self.dist.world_size, tokenizer=self.tokenizer)
        if cfg.loader == "map":  # same tokens, map-style + DistributedSampler (course_lib.dataloading)
            self.train_data = DistributedChunkBatches.like(self.train_data)

        # ---- 3. state counters ----
        self.step = 0                 # optimizer steps finished
        self.batches_consumed = 0     # micro-batches taken from the data stream (this rank)
        self.skipped_steps = 0        # GradScaler skips (fp16)
        self.history: List[dict] = []
        self.resumed_from: Optional[Path] = None

        self.ckpt = CheckpointManager(self.out_dir, keep_last=cfg.keep_last, interval=cfg.ckpt_interval,
                                      verbose=self.is_main) if save_checkpoints or cfg.resume else None
        self.save_checkpoints = save_checkpoints
        if cfg.resume and self.ckpt is not None:
            self.try_resume()

        # ---- 4. DDP wrap (after loading, so every rank starts from the same weights) ----
        self.ddp: Optional[DDP] = None
        if self.dist.enabled:
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.logger: Optional[StepLogger] = None
        self._data_iter = None

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
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.train_data.epoch_of(self.batches_consumed),
            "skipped_steps": self.skipped_steps,
            "config": {"model": self.model_cfg.to_dict(), "train": self.cfg.to_dict()},
            "rng": self._gather_rng(),
            "data": self.train_data.state_dict(self.batches_consumed),
            "world_size": self.dist.world_size,
            "tokenizer": self.tokenizer.describe(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.batches_consumed = int(state["data"]["batches_consumed"])
        self.train_data.load_state_dict(state["data"])
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self._data_iter = None

    def _validate_checkpoint(self, state: dict) -> None:
        saved = state.get("config", {}).get("model")
        if saved != self.model_cfg.to_dict():
            diff = sorted(k for k in set(saved or {}) | set(self.model_cfg.to_dict())
                          if (saved or {}).get(k) != self.model_cfg.to_dict().get(k))
            raise ConfigMismatchError(
                f"checkpoint in {self.out_dir} was trained with a different model config (fields {diff}); "
                "use a new out_dir, or the same ModelConfig, or resume=False to start over")
        saved_loader = state.get("data", {}).get("loader", "stream")
        if saved_loader != self.cfg.loader:
            raise ConfigMismatchError(
                f"checkpoint in {self.out_dir} was written with loader={saved_loader!r} but this run has "
                f"loader={self.cfg.loader!r}; the two visit samples in different orders. Use the same loader "
                "or a new out_dir")
        if state.get("world_size", 1) != self.dist.world_size:
            raise ConfigMismatchError(
                f"checkpoint was written by a run with world_size={state.get('world_size')} but this run has "
                f"{self.dist.world_size}; the data order depends on it. Resume with the same number of processes.")
        saved_train = state.get("config", {}).get("train", {})
        ignore = {"resume", "max_steps", "out_dir", "num_workers", "log_interval", "eval_interval",
                  "eval_batches", "ckpt_interval", "keep_last", "tensorboard", "device"}
        changed = [k for k, v in self.cfg.to_dict().items()
                   if k not in ignore and saved_train.get(k, v) != v and not (isinstance(v, tuple) and list(v) == saved_train.get(k))]
        if changed and self.is_main:
            print(f"[train] warning: resuming with changed training settings {changed}; "
                  "the run will not match an uninterrupted one", file=sys.stderr)

    def try_resume(self) -> Optional[Path]:
        found = self.ckpt.load_latest(map_location=self.device, validate=self._validate_checkpoint)
        if found is None:
            return None
        state, path = found
        self.load_state_dict(state)
        self.resumed_from = path
        if self.console or self.is_main:
            print(f"[train] resumed from {path} at step {self.step}", flush=True)
        return path

    # ------------------------------------------------------------------ data
    def _make_iter(self):
        c = self.cfg
        if isinstance(self.train_data, DistributedChunkBatches):
            return self.train_data.iterate(num_workers=c.num_workers, pin_memory=self.device.type == "cuda",
                                           generator=torch.Generator().manual_seed(c.seed))
        loader = DataLoader(self.train_data, batch_size=None, num_workers=c.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False,
                            # a private generator: creating worker seeds must not consume the
                            # global torch RNG, or a resumed run would drift from an uninterrupted one
                            generator=torch.Generator().manual_seed(c.seed))
        return iter(loader)

    def next_batch(self):
        if self._data_iter is None:
            self._data_iter = self._make_iter()
        x, y = next(self._data_iter)
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
        c, model = self.cfg, self.forward_model
        model.train()
        k = c.accumulation_steps
        loss_sum = 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        for micro in range(k):
            x, y = self.next_batch()
            if self.ddp is not None:
                # All-reduce gradients only on the last micro-batch. Setting the flag (as nanoGPT
                # does) instead of `with ddp.no_sync():` keeps one code path for every micro-step.
                self.ddp.require_backward_grad_sync = micro == k - 1
            with autocast_context(self.device, c.dtype):
                out = model(x, targets=y)
            loss = out.loss
            loss_val = float(loss.detach())
            if not self.dist.enabled and c.stop_on_nonfinite and not math.isfinite(loss_val):
                self.optimizer.zero_grad(set_to_none=True)
                check_finite(self.step + 1, loss=loss_val)
            loss_sum += loss_val / k
            scaled = loss / k     # mean over the k micro-batches = one big batch
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        for cb in self.callbacks:
            cb.on_after_backward(self)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)   # clip real gradients, not scaled ones
        params = [p for p in self.model.parameters() if p.grad is not None]
        if c.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.grad_clip))
        else:
            grad_norm = float(grad_global_norm(params))
        if self.scaler is None and c.stop_on_nonfinite and not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            check_finite(self.step + 1, loss=loss_sum, grad_norm=grad_norm)
        skipped = False
        if self.scaler is not None:
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)       # skips the step if grads hold inf/NaN
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale_before
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += 1
        else:
            self.scheduler.step()
        self.step += 1
        if self.dist.enabled:
            loss_sum = distributed.all_reduce_mean(loss_sum, self.dist)
        return {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                "skipped": skipped, "skipped_steps": self.skipped_steps,
                "epoch": self.train_data.epoch_of(self.batches_consumed)}

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        c = self.cfg
        self.model.eval()
        losses = []
        for x, y in eval_batches(self.val_tokens, c.seq_len, c.batch_size, c.eval_batches):
            with autocast_context(self.device, c.dtype):
                losses.append(float(self.model(x.to(self.device), targets=y.to(self.device)).loss))
        self.model.train()
        return sum(losses) / len(losses) if losses else None

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> Optional[Path]:
        state = self.state_dict()  # every rank joins the RNG gather
        path = None
        if self.is_main and self.save_checkpoints:
            for name, t in state["model"].items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise NonFiniteError(f"refusing to save step {self.step}: parameter {name} is not finite")
            path = self.ckpt.save(self.step, state)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        return path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> List[dict]:
        c = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            json.dump({"model": self.model_cfg.to_dict(), "train": c.to_dict()},
                      open(self.out_dir / "config.json", "w"), indent=2)
            json.dump(self.corpus.manifest(), open(self.out_dir / "data_manifest.json", "w"), indent=2)
            self.logger = StepLogger(self.out_dir, c.max_steps, c.log_interval,
                                     tensorboard=c.tensorboard, console=self.console)
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
                if self.save_checkpoints and self.ckpt is not None and (
                        self.ckpt.should_save(self.step) or self.step == c.max_steps):
                    self.save_checkpoint()
                distributed.maybe_inject_fault(self.step, self.dist.rank)  # tests/demos only: env-driven
        finally:
            if self.logger is not None:
                self.logger.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
MODEL_HELP = {
    "vocab_size": "vocabulary size (>= the tokenizer's; 258 for the byte tokenizer)",
    "d_model": "hidden size of the transformer",
    "n_layers": "number of transformer blocks",
    "n_heads": "attention (query) heads; d_model must be divisible by it",
    "n_kv_heads": "key/value heads; fewer than n_heads gives grouped-query attention",
    "ffn_hidden": "inner size of the SwiGLU feed-forward",
    "max_seq_len": "longest sequence the model supports (RoPE table size)",
    "rope_theta": "RoPE base frequency",
    "norm_eps": "RMSNorm epsilon",
    "tie_embeddings": "share the input embedding and the output projection",
    "dropout": "dropout probability in attention (0 = off)",
    "init_std": "standard deviation of the weight initialisation",
}
TRAIN_HELP = {
    "data": "'stdlib' (built-in corpus: Python's own sources) or a .txt/.jsonl file or folder",
    "seq_len": "tokens per training sequence",
    "batch_size": "sequences per micro-batch, per process",
    "val_fraction": "fraction of the token stream held out for evaluation",
    "num_workers": "DataLoader worker processes (0 = load in the main process)",
    "loader": "stream: IterableDataset sharded by rank and worker; map: map-style dataset + DistributedSampler "
              "(set_epoch every epoch)",
    "max_steps": "optimizer steps to train for",
    "lr": "peak learning rate",
    "min_lr": "learning rate floor at the end of the decay",
    "warmup_steps": "linear warmup steps (lr rises from 0 to lr)",
    "schedule": "lr schedule after warmup: constant, linear, cosine or wsd",
    "decay_fraction": "wsd only: fraction of the run spent decaying at the end",
    "weight_decay": "AdamW weight decay (matrices only)",
    "betas": "AdamW betas (two numbers)",
    "grad_clip": "clip the global gradient norm to this value (0 = no clipping)",
    "accumulation_steps": "micro-batches accumulated per optimizer step",
    "dtype": "fp32, bf16 (autocast) or fp16 (autocast + GradScaler)",
    "device": "auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)",
    "seed": "random seed (model init, data order)",
    "eval_interval": "evaluate on held-out text every N steps",
    "eval_batches": "batches per evaluation",
    "log_interval": "log metrics every N steps",
    "ckpt_interval": "save a checkpoint every N steps (0 = only at the end)",
    "keep_last": "checkpoints to keep on disk",
    "out_dir": "folder for checkpoints, metrics.jsonl and TensorBoard logs",
    "resume": "resume automatically from the latest good checkpoint in out_dir",
    "tensorboard": "write TensorBoard event files",
    "stop_on_nonfinite": "stop on NaN/Inf loss or gradient norm",
}


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, helps: dict, defaults) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        h = f"{helps[f.name]} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=float, nargs=len(default), default=None, help=h)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=None, help=h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.train",
        description="Train DIYModel on the default corpus or your own text. Also runs under "
                    "`torchrun --nproc_per_node=N -m course_lib.train` (DDP: gloo on CPU, nccl on GPU).")
    p.add_argument("--config", help="JSON file with {'model': {...}, 'train': {...}}; flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    g = p.add_argument_group("model")
    _add_dataclass_args(g, ModelConfig, MODEL_HELP, ModelConfig.small())
    g = p.add_argument_group("training")
    _add_dataclass_args(g, TrainConfig, TRAIN_HELP, TrainConfig.default())
    return p


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    model_kw, train_kw = {}, {}
    if args.config:
        data = json.loads(Path(args.config).read_text(encoding="utf-8"))
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ConfigError(f"{args.config}: unknown top-level key(s) {sorted(unknown)}; use 'model' and 'train'")
        model_kw.update(data.get("model", {}))
        train_kw.update(data.get("train", {}))
    for f in dataclasses.fields(ModelConfig):
        if getattr(args, f.name, None) is not None:
            model_kw[f.name] = getattr(args, f.name)
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name, None) is not None:
            train_kw[f.name] = tuple(getattr(args, f.name)) if f.name == "betas" else getattr(args, f.name)
    model_known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = set(model_kw) - model_known
    if bad:
        raise ConfigError(f"ModelConfig: unknown key(s) {sorted(bad)}")
    return ModelConfig.small(**model_kw), TrainConfig.default(**train_kw)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_cfg, train_cfg = configs_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}, indent=2))
        return 0
    trainer = Trainer(model_cfg, train_cfg)
    try:
        if trainer.is_main:
            print(f"[train] {trainer.model.num_parameters():,} parameters | device {trainer.device} | "
                  f"world size {trainer.dist.world_size} | data {trainer.corpus.source} "
                  f"({trainer.corpus.num_chars:,} chars, sha256 {trainer.corpus.sha256[:12]})", flush=True)
        t0 = time.perf_counter()
        history = trainer.fit()
        if trainer.is_main:
            if history:
                first, last = history[0]["loss"], history[-1]["loss"]
                ev = [h["eval_loss"] for h in history if h.get("eval_loss") is not None]
                print(f"[train] done in {time.perf_counter() - t0:.1f}s: loss {first:.3f} -> {last:.3f}"
                      + (f", eval loss {ev[-1]:.3f}" if ev else ""), flush=True)
            else:
                print(f"[train] nothing to do: already at step {trainer.step} of {train_cfg.max_steps}")
            print(f"[train] checkpoints in {Path(train_cfg.out_dir) / 'checkpoints'}; try: "
                  f"python -m course_lib.generate --run {train_cfg.out_dir} --prompt 'def '", flush=True)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
