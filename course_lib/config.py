"""Validated settings for the model and for training.

Two dataclasses, ``ModelConfig`` and ``TrainConfig``. Both:

* check every field when constructed and raise ``ConfigError`` naming the field and what to do;
* round-trip through JSON (``to_json`` / ``from_json``); unknown keys are an error, not ignored,
  so a typo in a config file never silently falls back to a default;
* have a ``quick mode``: when the environment variable ``COURSE_QUICK`` is ``1``, the *default
  sizes* shrink (fewer layers, steps, tokens) so tests and nbval run fast. Quick mode never
  changes a code path: it only changes numbers that a learner could also set by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

QUICK_ENV = "COURSE_QUICK"


def quick_mode() -> bool:
    """True when ``COURSE_QUICK`` is set to a true value (1/true/yes)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full, quick):
    """Return ``quick`` in quick mode and ``full`` otherwise (sizes only, never code paths)."""
    return quick if quick_mode() else full


class ConfigError(ValueError):
    """A setting is invalid. The message names the field and says how to fix it."""


def _fail(cls_name: str, name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{cls_name}.{name}={value!r}: {why}")


class _JsonMixin:
    """JSON round-trip with strict key checking, shared by both configs."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a JSON object / dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(known)}. "
                "Check the spelling, or remove the key."
            )
        kwargs = dict(data)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            # JSON has no tuples: turn lists back into tuples for tuple-typed fields.
            if f.name in kwargs and isinstance(kwargs[f.name], list) and "tuple" in str(f.type):
                kwargs[f.name] = tuple(kwargs[f.name])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike):
        """Build from a JSON string or from the path of a JSON file."""
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            p = Path(s)
            if not p.exists():
                raise ConfigError(f"{cls.__name__}: config file {p} does not exist")
            s = p.read_text(encoding="utf-8")
        try:
            data = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class ModelConfig(_JsonMixin):
    """Shape of ``DIYModel``, a decoder-only transformer (Llama-style).

    ``n_kv_heads < n_heads`` gives grouped-query attention (GQA); ``n_kv_heads == n_heads`` is
    ordinary multi-head attention.
    """

    vocab_size: int = 258          # 256 byte values + <pad> + <eos> (see data.ByteTokenizer)
    d_model: int = 128             # hidden size
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2            # GQA: 2 key/value heads shared by 4 query heads
    ffn_hidden: int = 352          # SwiGLU inner size (~8/3 * d_model, rounded to 32)
    max_seq_len: int = 256         # longest sequence RoPE tables are built for
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        n = type(self).__name__
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                _fail(n, name, v, "must be a positive integer")
        if self.d_model % self.n_heads:
            _fail(n, "d_model", self.d_model, f"must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            _fail(n, "n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads} (GQA groups)")
        if self.head_dim % 2:
            _fail(n, "d_model", self.d_model, "d_model / n_heads must be even for RoPE")
        if not (self.rope_theta > 0):
            _fail(n, "rope_theta", self.rope_theta, "must be > 0")
        if not (0 < self.norm_eps < 1):
            _fail(n, "norm_eps", self.norm_eps, "must be in (0, 1)")
        if not (0 <= self.dropout < 1):
            _fail(n, "dropout", self.dropout, "must be in [0, 1)")
        if not (self.init_std > 0):
            _fail(n, "init_std", self.init_std, "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def small(cls, **overrides) -> "ModelConfig":
        """The course's default model (~0.8M parameters); smaller still in quick mode."""
        base = dict(d_model=pick(128, 64), n_layers=pick(4, 2), n_heads=4, n_kv_heads=2,
                    ffn_hidden=pick(352, 176), max_seq_len=pick(256, 128))
        base.update(overrides)
        return cls(**base)


SCHEDULES = ("constant", "linear", "cosine", "wsd")
DTYPES = ("fp32", "bf16", "fp16")
LOADERS = ("stream", "map")


@dataclass
class TrainConfig(_JsonMixin):
    """Everything the training loop needs besides the model shape.

    Step counts are *optimizer* steps. With ``accumulation_steps = k`` one optimizer step uses
    ``k`` micro-batches of ``batch_size`` sequences each (per process under DDP).
    """

    # --- data ---
    data: str = "stdlib"            # "stdlib" (built-in corpus) or a path to .txt/.jsonl file or folder
    seq_len: int = 128
    batch_size: int = 16            # sequences per micro-batch, per process
    val_fraction: float = 0.05
    num_workers: int = 0
    loader: str = "stream"          # stream (IterableDataset sharded by rank+worker) | map (DistributedSampler)
    # --- optimisation ---
    max_steps: int = 600
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    schedule: str = "cosine"        # constant | linear | cosine | wsd
    decay_fraction: float = 0.2     # wsd only: last fraction of steps spent decaying
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0          # max global grad-norm; 0 disables clipping
    accumulation_steps: int = 1
    # --- precision / device ---
    dtype: str = "fp32"             # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA)
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    # --- bookkeeping ---
    seed: int = 1337
    eval_interval: int = 100
    eval_batches: int = 10
    log_interval: int = 10
    ckpt_interval: int = 100        # save every N optimizer steps; 0 disables
    keep_last: int = 3              # checkpoints kept on disk
    out_dir: str = "runs/default"
    resume: bool = True             # resume automatically from the latest good checkpoint in out_dir
    tensorboard: bool = True
    stop_on_nonfinite: bool = True

    def __post_init__(self) -> None:
        n = type(self).__name__
        pos_ints = ("seq_len", "batch_size", "max_steps", "accumulation_steps", "eval_interval",
                    "eval_batches", "log_interval")
        for name in pos_ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                _fail(n, name, v, "must be a positive integer")
        for name in ("warmup_steps", "ckpt_interval", "num_workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                _fail(n, name, v, "must be an integer >= 0")
        if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 1:
            _fail(n, "keep_last", self.keep_last, "must be an integer >= 1 (keep at least one checkpoint)")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            _fail(n, "lr", self.lr, "learning rate must be > 0")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            _fail(n, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        if self.warmup_steps > self.max_steps:
            _fail(n, "warmup_steps", self.warmup_steps,
                  f"must not exceed max_steps={self.max_steps} (warmup longer than the whole run)")
        if self.schedule not in SCHEDULES:
            _fail(n, "schedule", self.schedule, f"must be one of {SCHEDULES}")
        if not (0 < self.decay_fraction <= 1):
            _fail(n, "decay_fraction", self.decay_fraction, "must be in (0, 1]")
        if not (self.weight_decay >= 0):
            _fail(n, "weight_decay", self.weight_decay, "must be >= 0")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail(n, "betas", self.betas, "must be two numbers in [0, 1)")
        self.betas = tuple(float(b) for b in self.betas)
        if not (self.grad_clip >= 0):
            _fail(n, "grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")
        if not (0 <= self.val_fraction < 1):
            _fail(n, "val_fraction", self.val_fraction, "must be in [0, 1)")
        if self.loader not in LOADERS:
            _fail(n, "loader", self.loader, f"must be one of {LOADERS}")
        if self.dtype not in DTYPES:
            _fail(n, "dtype", self.dtype, f"must be one of {DTYPES}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail(n, "device", self.device, "must be auto, cpu, cuda or cuda:N")

    @classmethod
    def default(cls, **overrides) -> "TrainConfig":
        """The course's default run; far fewer steps and tokens in quick mode."""
        base = dict(max_steps=pick(600, 30), batch_size=pick(16, 8), seq_len=pick(128, 64),
                    warmup_steps=pick(50, 5), eval_interval=pick(100, 10), eval_batches=pick(10, 2),
                    log_interval=pick(10, 5), ckpt_interval=pick(100, 10))
        base.update(overrides)
        return cls(**base)
