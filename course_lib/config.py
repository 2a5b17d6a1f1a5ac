"""Validated settings for the model and for training.

Two dataclasses, ``ModelConfig`` and ``TrainConfig``. Both:

* check every field when constructed and raise ``ConfigError`` naming the field and what to do;
* round-trip through JSON (``to_json`` / ``from_json``); unknown keys are an error, not ignored,
  so a typo in a config file never silently falls back to a default; values are type-checked as
  JSON gives them (``"false"`` is not a boolean, ``NaN`` is not a learning rate);
* describe each field once, in its metadata (``setting(default, help, resume)``): the command
  line's ``--help`` and the trainer's resume check are generated from it;
* have a ``quick mode``: when the environment variable ``COURSE_QUICK`` is ``1``, the *default
  sizes* shrink (fewer layers, steps, tokens) so tests and nbval run fast. Quick mode never
  changes a code path: it only changes numbers that a learner could also set by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fsio import atomic_write_text

QUICK_ENV = "COURSE_QUICK"


def quick_mode() -> bool:
    """True when ``COURSE_QUICK`` is set to a true value (1/true/yes)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full, quick):
    """Return ``quick`` in quick mode and ``full`` otherwise (sizes only, never code paths)."""
    return quick if quick_mode() else full


class ConfigError(ValueError):
    """A setting is invalid. The message names the field, the problem and what to do:
    ``TrainConfig.lr: must be > 0 (got -1.0); set a positive learning rate, e.g. 3e-3``."""


def _fail(
    cls_name: str,
    name: str,
    value: Any,
    problem: str,
    todo: str = "change it in the config file or on the command line",
) -> None:
    raise ConfigError(f"{cls_name}.{name}: {problem} (got {value!r}); {todo}")


# ---- field metadata: one description per field -------------------------------------------
# ``help`` is the field's documentation; the CLI's --help is generated from it.
# ``resume`` says what changing the field means when a run resumes from a checkpoint:
RESUME_FREE = "free"  # bookkeeping only: the trained weights do not depend on it
RESUME_SCHEDULE = "schedule"  # changes the learning-rate schedule from the resumed step on (warned)
RESUME_RESULT = "result"  # changes what is trained (data, batch, seed, ...): allowed, warned
RESUME_MUST_MATCH = "match"  # must equal the checkpoint's value: resuming is refused otherwise
RESUME_KINDS = (RESUME_FREE, RESUME_SCHEDULE, RESUME_RESULT, RESUME_MUST_MATCH)


def setting(default: Any, help: str, resume: str = RESUME_RESULT) -> Any:
    """A dataclass field that carries its help text and its resume behaviour in metadata."""
    assert resume in RESUME_KINDS, resume
    return dataclasses.field(default=default, metadata={"help": help, "resume": resume})


def fields_by_resume(cls, kind: str) -> tuple:
    """Names of the fields of ``cls`` whose ``resume`` metadata is ``kind``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume") == kind)


_JSON_TYPE = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "tuple": "a list of numbers",
}


def np_bool_types() -> tuple:
    """numpy's bool type when numpy is installed (it is not a Python bool, nor an Integral)."""
    np = sys.modules.get("numpy")
    return (np.bool_,) if np is not None else ()


def _check_types(obj) -> None:
    """Check every field against its annotation, as JSON gives it: a JSON string "false" is
    not a boolean (it would be truthy), 1.5 is not an integer, NaN/inf are not numbers we train with."""
    n = type(obj).__name__
    for f in dataclasses.fields(obj):
        v, kind = getattr(obj, f.name), str(f.type)
        want = _JSON_TYPE.get(kind)
        if kind == "bool":
            ok = isinstance(v, (bool, np_bool_types()))
        elif kind == "int":  # numpy integers are accepted and stored as plain int (JSON-safe)
            ok = isinstance(v, numbers.Integral) and not isinstance(v, (bool, np_bool_types()))
        elif kind == "float":
            ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np_bool_types()))
            if ok and not math.isfinite(v):
                _fail(n, f.name, v, "must be a finite number", "NaN and infinity are not allowed")
        elif kind == "str":
            ok = isinstance(v, str)
        elif kind == "tuple":
            ok = isinstance(v, (list, tuple)) and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in v
            )
        else:  # pragma: no cover - every field has one of the types above
            continue
        if ok and kind in ("bool", "int", "float") and type(v) not in (bool, int, float):
            object.__setattr__(obj, f.name, {"bool": bool, "int": int, "float": float}[kind](v))
        if not ok:
            quotes = " without quotes" if isinstance(v, str) and kind in ("bool", "int", "float") else ""
            _fail(n, f.name, v, f"must be {want}, not {type(v).__name__}", f"write {want}{quotes}")


def check_keys(cls, data: Any, where: str = "") -> dict:
    """``data`` as a dict after checking it is a mapping with only known keys of ``cls``."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(
            f'{where}: expected a JSON object {{"key": value, ...}}, got '
            f"{type(data).__name__} {data!r:.40}; write the settings as an object"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; check the spelling or remove the key "
            f"(known keys: {', '.join(sorted(known))})"
        )
    return dict(data)


def read_json_file(path: str | os.PathLike, what: str = "config file") -> Any:
    """Parse a JSON file; every failure is a one-line ``ConfigError`` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a {what}; pass the path of a .json file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: {what} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror or e}); check its permissions") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{p}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "fix the syntax, e.g. double quotes around keys and no trailing commas"
        ) from None


class _JsonMixin:
    """JSON round-trip with strict key checking, shared by both configs."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, sort_keys=True)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = ""):
        kwargs = check_keys(cls, data, where)
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
            return cls.from_dict(read_json_file(s), where=cls.__name__)
        try:
            data = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({e}); fix the syntax") from None
        return cls.from_dict(data)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


_M = RESUME_MUST_MATCH


@dataclass
class ModelConfig(_JsonMixin):
    """Shape of ``DIYModel``, a decoder-only transformer (Llama-style).

    ``n_kv_heads < n_heads`` gives grouped-query attention (GQA); ``n_kv_heads == n_heads`` is
    ordinary multi-head attention. Every field must match the checkpoint on resume.
    """

    vocab_size: int = setting(258, "vocabulary size (>= the tokenizer's; 258 = 256 bytes + <pad> + <eos>)", _M)
    d_model: int = setting(128, "hidden size of the transformer", _M)
    n_layers: int = setting(4, "number of transformer blocks", _M)
    n_heads: int = setting(4, "attention (query) heads; d_model must be divisible by it", _M)
    n_kv_heads: int = setting(2, "key/value heads; fewer than n_heads gives grouped-query attention (GQA)", _M)
    ffn_hidden: int = setting(352, "inner size of the SwiGLU feed-forward (~8/3 * d_model, rounded to 32)", _M)
    max_seq_len: int = setting(256, "longest sequence the model supports (RoPE table size)", _M)
    rope_theta: float = setting(10000.0, "RoPE base frequency", _M)
    norm_eps: float = setting(1e-5, "RMSNorm epsilon", _M)
    tie_embeddings: bool = setting(True, "share the input embedding and the output projection", _M)
    dropout: float = setting(0.0, "dropout probability in attention (0 = off)", _M)
    init_std: float = setting(0.02, "standard deviation of the weight initialisation", _M)

    def __post_init__(self) -> None:
        _check_types(self)
        n = type(self).__name__
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
            v = getattr(self, name)
            if v <= 0:
                _fail(n, name, v, "must be a positive integer")
        if self.d_model % self.n_heads:
            _fail(
                n, "d_model", self.d_model, f"must be divisible by n_heads={self.n_heads}", "change d_model or n_heads"
            )
        if self.n_heads % self.n_kv_heads:
            _fail(
                n,
                "n_kv_heads",
                self.n_kv_heads,
                f"must divide n_heads={self.n_heads} (GQA groups)",
                "pick a divisor of n_heads",
            )
        if self.head_dim % 2:
            _fail(n, "d_model", self.d_model, "d_model / n_heads must be even for RoPE", "change d_model or n_heads")
        if not (self.rope_theta > 0):
            _fail(n, "rope_theta", self.rope_theta, "must be > 0", "the usual value is 10000")
        if not (0 < self.norm_eps < 1):
            _fail(n, "norm_eps", self.norm_eps, "must be in (0, 1)", "the usual value is 1e-5")
        if not (0 <= self.dropout < 1):
            _fail(n, "dropout", self.dropout, "must be in [0, 1)", "use 0 to turn dropout off")
        if not (self.init_std > 0):
            _fail(n, "init_std", self.init_std, "must be > 0", "the usual value is 0.02")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def small(cls, **overrides) -> ModelConfig:
        """The course's default model (~0.8M parameters); smaller still in quick mode."""
        base = dict(
            d_model=pick(128, 64),
            n_layers=pick(4, 2),
            n_heads=4,
            n_kv_heads=2,
            ffn_hidden=pick(352, 176),
            max_seq_len=pick(256, 128),
        )
        base.update(check_keys(cls, overrides))
        return cls(**base)


SCHEDULES = ("constant", "linear", "cosine", "wsd")
DTYPES = ("fp32", "bf16", "fp16")
LOADERS = ("stream", "map")
STRATEGIES = ("ddp", "fsdp")
TASKS = ("pretrain", "sft")
MAX_SEED = 2**32 - 1
_F, _S, _R = RESUME_FREE, RESUME_SCHEDULE, RESUME_RESULT


@dataclass
class TrainConfig(_JsonMixin):
    """Everything the training loop needs besides the model shape.

    Step counts are *optimizer* steps. With ``accumulation_steps = k`` one optimizer step uses
    ``k`` micro-batches of ``batch_size`` sequences each (per process under DDP).
    """

    # --- task: what is trained, from where, with which tokenizer ---
    task: str = setting(
        "pretrain",
        "pretrain: next-token loss on every token of the text; sft: conversations "
        "(JSONL messages or prompt/response) in the chat template, packed, loss on the assistant's "
        "tokens only (course_lib.sft)",
        _M,
    )
    init: str = setting(
        "",
        "start from a trained model instead of random weights: 'reference' (the shipped "
        "model), an inference artefact folder or a run folder; its model config and tokenizer "
        "are used ('' = random init)",
    )
    tokenizer: str = setting(
        "byte",
        "'byte' (UTF-8 bytes) or the path of a tokenizer.json trained by "
        "python -m course_lib.tokenizer; with --init the model's own tokenizer is used",
        _M,
    )
    # --- data ---
    data: str = setting(
        "stdlib",
        "'stdlib' (built-in corpus: Python's own sources; with --task sft: instruction "
        "pairs made from its functions) or a .txt/.jsonl file or folder",
    )
    seq_len: int = setting(128, "tokens per training sequence")
    batch_size: int = setting(16, "sequences per micro-batch, per process")
    val_fraction: float = setting(0.05, "fraction of the token stream held out for evaluation")
    num_workers: int = setting(0, "DataLoader worker processes (0 = load in the main process)", _F)
    loader: str = setting(
        "stream",
        "stream: IterableDataset sharded by rank and worker; map: map-style dataset "
        "+ DistributedSampler (set_epoch every epoch)",
        _M,
    )
    # --- optimisation ---
    max_steps: int = setting(600, "optimizer steps to train for (the lr schedule is laid out over them)", _S)
    lr: float = setting(3e-3, "peak learning rate", _S)
    min_lr: float = setting(3e-4, "learning rate floor at the end of the decay", _S)
    warmup_steps: int = setting(50, "linear warmup steps (lr rises from 0 to lr)", _S)
    schedule: str = setting("cosine", "lr schedule after warmup: constant, linear, cosine or wsd", _S)
    decay_fraction: float = setting(0.2, "wsd only: fraction of the run spent decaying at the end", _S)
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)")
    betas: tuple = setting((0.9, 0.95), "AdamW betas (two numbers)")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this value (0 = no clipping)")
    accumulation_steps: int = setting(1, "micro-batches accumulated per optimizer step")
    # --- precision / device ---
    dtype: str = setting("fp32", "fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA)")
    activation_checkpointing: bool = setting(
        False,
        "recompute each transformer block's activations in the backward "
        "instead of keeping them: less memory, about one more forward of compute "
        "per step; the same gradients",
        _F,
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)", _F)
    strategy: str = setting(
        "ddp",
        "ddp: every rank holds the whole model (gradients all-reduced); fsdp: "
        "parameters, gradients and optimizer state sharded across ranks (FSDP2), "
        "sharded checkpoints (DCP) that resume on another number of processes",
        _M,
    )
    # --- bookkeeping ---
    seed: int = setting(1337, f"random seed (model init, data order), 0..{MAX_SEED}")
    eval_interval: int = setting(100, "evaluate on held-out text every N steps", _F)
    eval_batches: int = setting(10, "batches per evaluation", _F)
    log_interval: int = setting(10, "log metrics every N steps (the loss is read from the device only then)", _F)
    ckpt_interval: int = setting(100, "save a checkpoint every N steps; 0 = only at the end", _F)
    keep_last: int = setting(3, "checkpoints of this run kept on disk", _F)
    out_dir: str = setting("runs/default", "folder for checkpoints, metrics.jsonl and TensorBoard logs", _F)
    resume: bool = setting(
        True,
        "resume from the latest good checkpoint in out_dir; --no-resume starts over "
        "and moves that folder's earlier checkpoints aside (never deletes them)",
        _F,
    )
    tensorboard: bool = setting(True, "write TensorBoard event files", _F)
    stop_on_nonfinite: bool = setting(True, "stop on NaN/Inf loss or gradient norm", _F)
    peak_flops: float = setting(
        0.0,
        "peak FLOP/s of one device, for the MFU column of the log (e.g. 989e12: an "
        "H100's dense bf16); 0 = measure once at the start with a short GEMM "
        "(course_lib.roofline.measured_peak_flops)",
        _F,
    )

    def __post_init__(self) -> None:
        _check_types(self)
        n = type(self).__name__
        self._check_steps_and_optimizer(n)
        self._check_data_parallelism_and_paths(n)

    def _check_steps_and_optimizer(self, n: str) -> None:
        pos_ints = (
            "seq_len",
            "batch_size",
            "max_steps",
            "accumulation_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
        )
        for name in pos_ints:
            v = getattr(self, name)
            if v <= 0:
                _fail(n, name, v, "must be a positive integer")
        for name in ("warmup_steps", "ckpt_interval", "num_workers", "seed"):
            v = getattr(self, name)
            if v < 0:
                _fail(n, name, v, "must be an integer >= 0")
        if not (self.peak_flops >= 0):
            _fail(n, "peak_flops", self.peak_flops, "must be >= 0", "0 measures the peak at the start")
        if self.seed > MAX_SEED:
            _fail(n, "seed", self.seed, f"must be at most {MAX_SEED} (2**32 - 1)", "pick a smaller seed")
        if self.keep_last < 1:
            _fail(n, "keep_last", self.keep_last, "must be an integer >= 1", "keep at least one checkpoint")
        if not (self.lr > 0):
            _fail(n, "lr", self.lr, "learning rate must be > 0", "e.g. 3e-3")
        if not (0 <= self.min_lr <= self.lr):
            _fail(n, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]", "lower min_lr or raise lr")
        if self.warmup_steps > self.max_steps:
            _fail(
                n,
                "warmup_steps",
                self.warmup_steps,
                f"must not exceed max_steps={self.max_steps} (warmup longer than the whole run)",
                "shorten the warmup or train longer",
            )
        if self.schedule not in SCHEDULES:
            _fail(n, "schedule", self.schedule, f"must be one of {SCHEDULES}")
        if not (0 < self.decay_fraction <= 1):
            _fail(n, "decay_fraction", self.decay_fraction, "must be in (0, 1]")
        if not (self.weight_decay >= 0):
            _fail(n, "weight_decay", self.weight_decay, "must be >= 0")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail(n, "betas", self.betas, "must be two numbers in [0, 1)", "e.g. 0.9 0.95")
        self.betas = tuple(float(b) for b in self.betas)
        if not (self.grad_clip >= 0):
            _fail(n, "grad_clip", self.grad_clip, "must be >= 0", "0 disables clipping")

    def _check_data_parallelism_and_paths(self, n: str) -> None:
        if not (0 <= self.val_fraction < 1):
            _fail(n, "val_fraction", self.val_fraction, "must be in [0, 1)")
        if self.loader not in LOADERS:
            _fail(n, "loader", self.loader, f"must be one of {LOADERS}")
        if self.strategy not in STRATEGIES:
            _fail(n, "strategy", self.strategy, f"must be one of {STRATEGIES}", "use --strategy ddp or --strategy fsdp")
        if self.dtype not in DTYPES:
            _fail(n, "dtype", self.dtype, f"must be one of {DTYPES}")
        if self.dtype == "fp16" and self.strategy == "fsdp":
            # torch.amp.GradScaler looks for inf/NaN in the gradients this rank holds; under FSDP
            # those are shards, so ranks could disagree on skipping a step and drift apart
            _fail(
                n,
                "dtype",
                self.dtype,
                "fp16 (GradScaler) is not supported with strategy fsdp: each rank "
                "would check only its own gradient shard for inf/NaN",
                "use --dtype bf16 (no GradScaler needed)",
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail(n, "device", self.device, "must be auto, cpu, cuda or cuda:N")
        if self.task not in TASKS:
            _fail(n, "task", self.task, f"must be one of {TASKS}")
        if self.task == "sft" and self.loader != "stream":
            _fail(
                n,
                "loader",
                self.loader,
                "--task sft packs conversations into rows read by the stream loader",
                "use --loader stream",
            )
        if not self.tokenizer:
            _fail(n, "tokenizer", self.tokenizer, "must not be empty", "use 'byte' or the path of a tokenizer.json")
        if not self.data:
            _fail(n, "data", self.data, "must not be empty", "use 'stdlib' or the path of your text")
        if not self.out_dir:
            _fail(n, "out_dir", self.out_dir, "must not be empty", "name a folder for this run")

    @classmethod
    def default(cls, **overrides) -> TrainConfig:
        """The course's default run; far fewer steps and tokens in quick mode."""
        base = dict(
            max_steps=pick(600, 30),
            batch_size=pick(16, 8),
            seq_len=pick(128, 64),
            warmup_steps=pick(50, 5),
            eval_interval=pick(100, 10),
            eval_batches=pick(10, 2),
            log_interval=pick(10, 5),
            ckpt_interval=pick(100, 10),
        )
        base.update(check_keys(cls, overrides))
        return cls(**base)
