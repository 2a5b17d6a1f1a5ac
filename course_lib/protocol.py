"""Bring your own model: what a model must provide for Trainer, generate, the engine and export.

The contract is ``CausalLM`` below (a ``typing.Protocol``: nothing to inherit). ``DIYModel`` is one;
a learner's stage-3 model either implements it directly or is wrapped by an adapter here
(``HFCausalLM`` for any Hugging Face ``*ForCausalLM``). The library never checks types one by one:
``as_causal_lm(obj)`` is the single place a foreign object becomes a ``CausalLM``.

**forward** ``model(input_ids, attention_mask=None, position_ids=None, past_key_values=None,
use_cache=False, targets=None)`` returns an object with ``.logits`` (B, T, vocab), ``.loss`` (a
scalar when ``targets`` is given, else None) and ``.past_key_values``:

* ``targets`` are *aligned* with the inputs (``targets[:, t]`` follows ``input_ids[:, t]``,
  nanoGPT style, not HF's ``labels`` that the model shifts), ``-100`` = ignored. Trainer calls
  ``model(x, targets=y)`` and backpropagates ``.loss``;
* ``attention_mask`` (B, past + T) marks real tokens with 1 and left padding with 0; position ids
  are derived from it (``model.position_ids_from_mask``) unless given;
* the KV cache is a ``course_lib.kv_cache.Cache`` passed as ``past_key_values``: the model's attention
  in layer ``i`` calls ``k, v = cache.update(i, k_new, v_new)`` with (B, n_kv_heads, T, head_dim)
  tensors and attends over what it returns, masking key slots beyond ``cache.attended_length(T)``
  and padding (``model.build_attention_mask``). generate() passes a ``DynamicCache`` (or a static /
  int8 / paged one by name); the engine passes its ``RaggedPagedCache`` (paged blocks, a left-padded
  view, decode one token per row). A model that cannot take the course's cache still works with
  Trainer and generate through ``HFCausalLM``-style *recompute*: it keeps the token history in the
  cache and runs the whole sequence each step (correct, no speed-up; generate only, no engine).

**config** ``model.config`` has ``vocab_size`` and ``max_seq_len`` (checked against the tokenizer and
``seq_len``); for preallocated / paged caches also ``n_layers``, ``n_kv_heads``, ``head_dim``.

**state_dict** ``model.state_dict()`` -> ``load_state_dict()`` into a model built from the same spec
restores it exactly (tensors only: saved with torch.save, loaded with ``weights_only=True``;
buffers derived from the config should be ``persistent=False``). The *spec* is what rebuilds it:
``ModelSpec("package.module:factory", {json kwargs})``, stored in every checkpoint and artefact and
required to match on resume (like ``ModelConfig``). ``python -m course_lib.train --model-class
package.module:factory --model-kwargs '{"n_layer": 2}'`` trains such a model.

Optional: ``set_activation_checkpointing(bool)`` (``--activation-checkpointing``),
``num_parameters()``. Not supported for foreign models: ``--strategy fsdp`` (``fsdp.apply_fsdp``
wraps ``DIYModel``'s blocks), ``generate(compile=True)`` and the HF Llama export of ``DIYModel``.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import ConfigError, ModelConfig
from .kv_cache import DynamicCache
from .model import DIYModel, ModelOutput, position_ids_from_mask


@runtime_checkable
class CausalLM(Protocol):
    """What Trainer, generate, the engine and export need (see the module docstring)."""

    config: Any

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        targets: Tensor | None = None,
    ) -> Any: ...

    def state_dict(self, *args, **kwargs) -> dict: ...

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> Any: ...

    def parameters(self, recurse: bool = True) -> Any: ...


@dataclass(frozen=True)
class LMShape:
    """The ``config`` an adapter gives a foreign model (the fields the course reads)."""

    vocab_size: int
    max_seq_len: int
    n_layers: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


FORWARD_ARGS = ("input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache", "targets")


def load_factory(target: str) -> Callable[..., Any]:
    """``"package.module:name"`` -> the callable (a class or a function); one-line errors."""
    mod_name, sep, attr = str(target).partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(
            f"--model-class: {target!r} is not 'package.module:Factory'; write the module path, a "
            "colon and the class or function that builds the model"
        )
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"--model-class: cannot import {mod_name!r} ({e}); put its folder on PYTHONPATH or "
            "install it (pip install -e .)"
        ) from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model-class: module {mod_name!r} has no {attr!r}; check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model-class: {target!r} is not callable; name a class or a function returning a model")
    return obj


class ModelSpec:
    """A model given by import path and JSON keyword arguments; Trainer's ``model_cfg`` for a
    foreign model. ``to_dict()`` is what checkpoints store and resume compares."""

    def __init__(self, target: str | Callable[..., Any], kwargs: dict | None = None) -> None:
        # a callable is used as it is (in-process, e.g. a class defined in a notebook); its
        # "module:name" is what the checkpoint records
        self.factory = target if callable(target) else None
        self.target = f"{target.__module__}:{target.__qualname__}" if callable(target) else str(target)
        self.kwargs = dict(kwargs or {})
        try:
            json.dumps(self.kwargs)
        except TypeError as e:
            raise ConfigError(f"--model-kwargs: must be JSON (numbers, strings, lists, objects): {e}") from None
        self._shape: Any | None = None

    def to_dict(self) -> dict:
        return {"class": self.target, "kwargs": self.kwargs}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(d["class"], d.get("kwargs", {}))

    def build(self) -> nn.Module:
        """Call the factory and adapt what it returns (``as_causal_lm``); the spec travels with it."""
        obj = (self.factory or load_factory(self.target))(**self.kwargs)
        model = as_causal_lm(obj)
        model.course_spec = self.to_dict()
        return model

    @property
    def shape(self) -> Any:
        """The model's ``config``, read from a copy built on the meta device (no memory, no RNG)."""
        if self._shape is None:
            with torch.device("meta"):
                self._shape = self.build().config
            check_config(self._shape, self.target)
        return self._shape

    @property
    def vocab_size(self) -> int:
        return int(self.shape.vocab_size)

    @property
    def max_seq_len(self) -> int:
        return int(self.shape.max_seq_len)

    def __repr__(self) -> str:
        return f"ModelSpec({self.target!r}, {self.kwargs!r})"


def check_config(config: Any, where: str) -> None:
    missing = [k for k in ("vocab_size", "max_seq_len") if not isinstance(getattr(config, k, None), int)]
    if missing:
        raise ConfigError(
            f"{where}: model.config lacks {missing}; give the model a config with integer vocab_size "
            "and max_seq_len (see course_lib/protocol.py)"
        )


def _is_hf_causal_lm(obj: Any) -> bool:
    cfg = getattr(obj, "config", None)
    return isinstance(obj, nn.Module) and hasattr(cfg, "model_type") and hasattr(obj, "get_output_embeddings")


def as_causal_lm(obj: Any) -> nn.Module:
    """``obj`` as a ``CausalLM``: a native one unchanged, a Hugging Face causal LM wrapped in
    ``HFCausalLM``; anything else is refused with what it lacks."""
    if isinstance(obj, (DIYModel, HFCausalLM, PlainCausalLM)):
        return obj
    if _is_hf_causal_lm(obj):
        return HFCausalLM(obj)
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"--model-class: the factory returned {type(obj).__name__}, not a torch.nn.Module")
    params = inspect.signature(obj.forward).parameters
    lacking = [a for a in FORWARD_ARGS if a not in params]
    if lacking:
        raise ConfigError(
            f"--model-class: {type(obj).__name__}.forward lacks {lacking}; implement "
            "forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, targets) "
            "as in course_lib/protocol.py, or wrap the model like HFCausalLM does"
        )
    check_config(getattr(obj, "config", None), type(obj).__name__)
    return obj


def build_model(model_cfg: Any, activation_checkpointing: bool = False) -> nn.Module:
    """``DIYModel`` for a ``ModelConfig``, the spec's model for a ``ModelSpec`` (Trainer's one call)."""
    model = model_cfg.build() if isinstance(model_cfg, ModelSpec) else DIYModel(model_cfg)
    if activation_checkpointing:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ConfigError(
                f"TrainConfig.activation_checkpointing: {type(model).__name__} has no "
                "set_activation_checkpointing(bool); turn it off or implement it"
            )
        model.set_activation_checkpointing(True)
    return model


def model_from_dict(d: dict) -> nn.Module:
    """Rebuild the model a checkpoint or artefact describes: a spec (``{"class", "kwargs"}``) or a
    ``ModelConfig`` dict."""
    if "class" in d:
        return ModelSpec.from_dict(d).build()
    return DIYModel(ModelConfig.from_dict(d))


def config_dict(model: nn.Module) -> dict:
    """What an artefact stores to rebuild ``model`` (its spec if it has one)."""
    spec = getattr(model, "course_spec", None)
    return dict(spec) if spec is not None else model.config.to_dict()


def num_parameters(model: nn.Module) -> int:
    fn = getattr(model, "num_parameters", None)
    return int(fn()) if callable(fn) else sum(p.numel() for p in model.parameters())


def aligned_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with targets already aligned to the inputs (``-100`` ignored), in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def history_from_cache(cache: Any, input_ids: Tensor) -> Tensor:
    """Recompute mode: append ``input_ids`` to the token history kept in ``cache`` and return the
    whole history (B, past + T). The ids are stored as layer 0's "keys" of a ``DynamicCache``, so
    the cache's length, ``reorder`` (generate dropping finished rows) and batching keep working."""
    if not isinstance(cache, DynamicCache):
        raise ValueError(
            f"this model recomputes the sequence instead of using the KV cache, which works with a "
            f"DynamicCache only (generate's default), not {type(cache).__name__}; the engine and "
            "static/paged caches need a model whose attention calls cache.update(layer, k, v) "
            "(see course_lib/protocol.py)"
        )
    ids = input_ids.to(torch.float32)[:, None, :, None]  # exact for ids < 2**24
    hist, _ = cache.update(0, ids, ids)
    return hist[:, 0, :, 0].long()


class _RecomputeLM(nn.Module):
    """Base of the wrappers that generate in recompute mode (``history_from_cache``): ``forward``
    rebuilds the whole sequence from the cache, asks ``_all_logits`` for its logits, keeps the new
    positions' and computes the loss from the course's aligned targets."""

    def _all_logits(self, ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, T: int) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        targets: Tensor | None = None,
    ) -> ModelOutput:
        T = input_ids.shape[1]
        ids = history_from_cache(past_key_values, input_ids) if past_key_values is not None else input_ids
        logits = self._all_logits(ids, attention_mask, position_ids, T)[:, -T:]
        loss = aligned_loss(logits, targets) if targets is not None else None
        return ModelOutput(logits=logits, loss=loss, past_key_values=past_key_values if use_cache else None)


class HFCausalLM(_RecomputeLM):
    """A Hugging Face causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...) as a ``CausalLM``.

    Training: HF's forward with the course's aligned targets (the loss is computed here, not by
    HF's shifted ``labels``). Generation: recompute mode (see ``history_from_cache``): HF keeps
    its own cache type, so each step reruns the sequence; tokens equal HF's own greedy
    ``generate``. The wrapped model is ``.hf`` (``.hf.save_pretrained(dir)`` exports it for HF)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        c = hf_model.config
        heads = getattr(c, "num_attention_heads", 1)
        self.config = LMShape(
            vocab_size=int(c.vocab_size),
            max_seq_len=int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", 0)),
            n_layers=int(getattr(c, "num_hidden_layers", 0)),
            n_kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(c, "head_dim", None) or c.hidden_size // heads),
        )

    def _all_logits(self, ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, T: int) -> Tensor:
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must cover past + new tokens: expected {tuple(ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if position_ids is None and attention_mask is not None:
            position_ids = position_ids_from_mask(attention_mask, ids.shape[1])
        elif position_ids is not None and ids.shape[1] != T:
            raise ValueError("HFCausalLM: explicit position_ids with a cache are not supported (recompute mode)")
        out = self.hf(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.logits

    def set_activation_checkpointing(self, enabled: bool = True) -> HFCausalLM:
        if enabled:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.hf.gradient_checkpointing_disable()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())


class PlainCausalLM(_RecomputeLM):
    """A stage-3 style model, ``forward(idx) -> logits`` or ``-> (logits, loss)`` (nanoGPT's shape),
    as a ``CausalLM``: the loss is computed here from aligned targets, generation runs in recompute
    mode (``history_from_cache``). Padded batches need the model to take an attention mask, which
    such a model has not: generate unpadded prompts (one length) with it."""

    def __init__(self, model: nn.Module, vocab_size: int | None = None, max_seq_len: int | None = None) -> None:
        super().__init__()
        self.inner = model
        cfg = getattr(model, "config", None)
        vocab = vocab_size or getattr(cfg, "vocab_size", None)
        seq = max_seq_len or getattr(cfg, "max_seq_len", None) or getattr(cfg, "block_size", None)
        if not (isinstance(vocab, int) and isinstance(seq, int)):
            raise ConfigError(
                f"PlainCausalLM: cannot read vocab_size and max_seq_len from {type(model).__name__}"
                ".config; pass PlainCausalLM(model, vocab_size=..., max_seq_len=...)"
            )
        self.config = LMShape(vocab_size=vocab, max_seq_len=seq)
        # nanoGPT's forward returns only the last position's logits when targets is None: pass
        # dummy targets to get all of them (its own loss is not used; ours ignores -100)
        self._dummy_targets = "targets" in inspect.signature(model.forward).parameters

    def _all_logits(self, ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, T: int) -> Tensor:
        if attention_mask is not None and not bool(attention_mask.all()):  # one host read per call
            raise ValueError(
                "PlainCausalLM: this model takes no attention mask, so padded batches would be wrong; "
                "generate prompts of one length, or give the model attention_mask support"
            )
        out = self.inner(ids, targets=torch.zeros_like(ids)) if self._dummy_targets else self.inner(ids)
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
