"""Inference artefacts: weights + config, nothing else.

A *training checkpoint* (``checkpoint.py``) holds everything needed to continue training:
weights, AdamW moments (2x the weights again), scheduler, GradScaler, RNG of every rank, data
position. To *serve* a model you need only the weights and a description of the architecture
and tokenizer. This module writes exactly that::

    out_dir/model.safetensors   the weights (safetensors: a JSON header + raw tensor bytes; no pickle)
    out_dir/config.json         {"format", "model": ModelConfig, "tokenizer": describe(), "tied_weights", ...}

and loads it back in a fresh process by *building the model from the config* and then filling
in the tensors, after checking that every name and shape matches (a mismatch names the
tensors and both shapes). Loading never unpickles anything.

Tied weights: ``lm_head.weight`` *is* ``embed_tokens.weight`` (one tensor). safetensors refuses
to save tensors that share memory, on purpose (a loader could not know they must stay tied),
so the artefact stores the tensor once under ``embed_tokens.weight`` and records the tie in
``config.json`` (``"tied_weights": {"lm_head.weight": "embed_tokens.weight"}``); the model
built from the config re-ties them. HF does the same (``tie_word_embeddings``).

``export_hf_llama`` writes the Hugging Face Llama layout (``config.json`` with
``LlamaForCausalLM`` fields + ``model.safetensors``), loadable by
``transformers.AutoModelForCausalLM.from_pretrained``: parameter names already follow HF, so
the export adds the ``model.`` prefix and translates the config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .checkpoint import SHARDED_FORMAT, CheckpointError, CheckpointManager, ShardedCheckpointManager, checkpoint_format
from .cli import EXIT_FAILED, error_line
from .config import ModelConfig
from .data import ByteTokenizer, DataError
from .fsdp import load_full_model_state
from .fsio import atomic_path, atomic_write_text
from .protocol import config_dict, model_from_dict
from .tokenizer import (
    file_description,
    load_artifact_tokenizer,
    save_artifact_tokenizer,
    save_hf_tokenizer,
    tokenizer_from_description,
)

FORMAT = "course_lib.inference/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ExportError(ValueError):
    """An artefact cannot be written or loaded; the message names the file/tensors and the fix."""


def save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, written atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def tied_weights(model) -> dict[str, str]:
    """``{alias: stored_name}`` for parameters that are the same tensor as an earlier one."""
    seen: dict[int, str] = {}
    ties: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            ties[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return ties


def inference_state_dict(model, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Persistent tensors minus tied aliases, contiguous, on CPU (optionally cast, e.g. fp16)."""
    ties = tied_weights(model)
    out = {}
    for name, t in model.state_dict().items():
        if name in ties:
            continue
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().clone()
    return out


def save_inference(
    model, out_dir: str | os.PathLike, tokenizer=None, dtype: torch.dtype | None = None, extra: dict | None = None
) -> dict:
    """Write ``model.safetensors`` + ``config.json``; return ``{"dir", "bytes", "tensors"}``.

    Each file is written atomically (fsync + rename): a crash leaves the previous file or the
    new one, never a torn one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or ByteTokenizer()
    tensors = inference_state_dict(model, dtype)
    stored_dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    meta = {
        "format": FORMAT,
        "model": config_dict(model),
        "tokenizer": file_description(tok.describe()),
        "tied_weights": tied_weights(model),
        "dtype": stored_dtype,
        "weights": WEIGHTS_FILE,
    }
    if extra:
        meta.update(extra)
    save_safetensors(tensors, out / WEIGHTS_FILE, metadata={"format": "pt", "course_lib": FORMAT})
    save_artifact_tokenizer(tok, out)  # a BPE goes with the weights as tokenizer.json
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return {
        "dir": out,
        "bytes": (out / WEIGHTS_FILE).stat().st_size + (out / CONFIG_FILE).stat().st_size,
        "tensors": len(tensors),
    }


def read_config(path: str | os.PathLike) -> dict:
    p = Path(path)
    cfg_path = p / CONFIG_FILE if p.is_dir() else p
    if not cfg_path.exists():
        raise ExportError(
            f"{cfg_path} not found; an inference artefact is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise ExportError(f"{cfg_path}: no 'model' section; was it written by course_lib.export.save_inference?")
    return meta


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a safetensors file; any other format (e.g. a pickled .pt) is refused."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(
            f"{path}: not a readable safetensors file ({e}); weights are never loaded "
            "from pickle files here, re-export them with save_inference()"
        ) from None


def check_tensors(
    expected: dict[str, tuple[tuple, torch.dtype]], got: dict[str, Tensor], where: str, check_dtype: bool = False
) -> None:
    """Raise ``ExportError`` listing missing, unexpected and wrongly shaped tensors."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad = []
    for name in sorted(set(expected) & set(got)):
        shape, dt = expected[name]
        if tuple(got[name].shape) != tuple(shape) or (check_dtype and got[name].dtype != dt):
            bad.append(
                f"{name}: file has {tuple(got[name].shape)} {str(got[name].dtype).removeprefix('torch.')}, "
                f"config expects {tuple(shape)} {str(dt).removeprefix('torch.')}"
            )
    if missing or unexpected or bad:
        lines = [f"{where}: the weights do not match the model built from the config."]
        if bad:
            lines.append(
                "  shape mismatch: " + "; ".join(bad[:8]) + (f"; ... ({len(bad)} in all)" if len(bad) > 8 else "")
            )
        if missing:
            lines.append(
                f"  missing from the file: {missing[:8]}" + (f" ... ({len(missing)})" if len(missing) > 8 else "")
            )
        if unexpected:
            lines.append(
                f"  not in the model: {unexpected[:8]}" + (f" ... ({len(unexpected)})" if len(unexpected) > 8 else "")
            )
        lines.append("  Use the config.json that was exported together with these weights.")
        raise ExportError("\n".join(lines))


def load_inference(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32):
    """Build ``DIYModel`` from ``config.json``, fill it from ``model.safetensors``.

    Returns ``(model, tokenizer, meta)``; the model is in eval mode on ``device``.
    """
    folder = Path(path)
    meta = read_config(folder)
    try:
        model = model_from_dict(meta["model"])  # a ModelConfig, or the spec of a --model-class model
    except Exception as e:  # ConfigError or TypeError from a hand-edited file
        raise ExportError(f"{folder / CONFIG_FILE}: invalid model config ({e})") from None
    tensors = read_safetensors(folder / meta.get("weights", WEIGHTS_FILE))
    ties = tied_weights(model)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items() if k not in ties}
    check_tensors(expected, tensors, str(folder / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert set(missing) <= set(ties) and not unexpected, (missing, unexpected)
    try:
        tok = load_artifact_tokenizer(folder, meta.get("tokenizer", {"type": "byte"}))
    except DataError as e:
        raise ExportError(str(e)) from None
    return model.to(device=device, dtype=dtype).eval(), tok, meta


def is_sharded_run(run_dir: str | os.PathLike) -> bool:
    """True when the run's latest complete checkpoint is sharded (an ``--strategy fsdp`` run)."""
    latest = CheckpointManager(run_dir, verbose=False).latest()
    return latest is not None and checkpoint_format(latest) == SHARDED_FORMAT


def load_sharded_checkpoint(run_dir: str | os.PathLike, map_location="cpu"):
    """``load_training_checkpoint`` for a sharded (FSDP, DCP) run, offline: no process group,
    any number of shards; the newest checkpoint that verifies and loads, older ones as fallback.
    ``state`` is the trainer state (no optimizer: export does not need it)."""
    mgr = ShardedCheckpointManager(run_dir, verbose=False)
    found = mgr.first_good(lambda folder: load_full_model_state(folder, map_location))
    if found is not None:
        (model, state), folder = found
        tok = tokenizer_from_description(state.get("tokenizer", {"type": "byte"}))
        return model.eval(), tok, state, folder
    raise FileNotFoundError(
        f"no complete sharded checkpoint under {mgr.dir}; "
        "train first: python -m course_lib.train --strategy fsdp --out-dir " + str(run_dir)
    )


def load_training_checkpoint(run_dir: str | os.PathLike, map_location="cpu"):
    """The latest good training checkpoint of a run folder, as ``(model, tokenizer, state, path)``.

    The model is rebuilt from the config stored in the checkpoint (never from the caller's),
    then filled with the checkpoint's weights; ``state`` is the whole training state. A sharded
    checkpoint (``--strategy fsdp``) is detected and gathered into one model offline.
    """
    if is_sharded_run(run_dir):
        return load_sharded_checkpoint(run_dir, map_location)
    found = CheckpointManager(run_dir, verbose=False).load_latest(map_location=map_location)
    if found is None:
        raise FileNotFoundError(
            f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}; "
            "train first: python -m course_lib.train --out-dir " + str(run_dir)
        )
    state, path = found
    model = model_from_dict(state["config"]["model"])  # DIYModel, or the spec of a --model-class model
    model.load_state_dict(state["model"])
    tok = tokenizer_from_description(state.get("tokenizer", {"type": "byte"}))
    return model.eval(), tok, state, path


def load_model_from_run(run_dir: str | os.PathLike, map_location="cpu"):
    """Model + tokenizer + checkpoint folder from the latest good training checkpoint of a run."""
    model, tok, _, path = load_training_checkpoint(run_dir, map_location)
    return model, tok, path


def export_from_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> dict:
    """Latest good training checkpoint of ``run_dir`` -> inference artefact in ``out_dir``."""
    try:
        model, tok, state, ckpt = load_training_checkpoint(run_dir)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    info = save_inference(
        model, out_dir, tok, dtype=dtype, extra={"source_checkpoint": {"step": int(state["step"]), "folder": ckpt.name}}
    )
    info.update(step=int(state["step"]), checkpoint=ckpt)
    return info


def describe_checkpoint(state: dict) -> dict[str, int]:
    """Bytes per top-level entry of a training state dict (what a checkpoint is made of)."""

    def nbytes(obj) -> int:
        if isinstance(obj, Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(nbytes(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(nbytes(v) for v in obj)
        if isinstance(obj, (bytes, bytearray)):
            return len(obj)
        return 0

    return {k: nbytes(v) for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# Hugging Face Llama layout
# --------------------------------------------------------------------------------------------
def hf_llama_config(cfg: ModelConfig, tokenizer=None) -> dict:
    """``config.json`` for ``LlamaForCausalLM`` describing the same network as ``cfg``."""
    tok = tokenizer or ByteTokenizer()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "pad_token_id": tok.pad_id,
        "eos_token_id": tok.eos_id,
        "bos_token_id": None,
        "use_cache": True,
        "torch_dtype": "float32",
        "course_lib_tokenizer": file_description(tok.describe()),
    }


def hf_state_dict(model) -> dict[str, Tensor]:
    """Our names -> HF names: everything but ``lm_head`` moves under ``model.``; tied alias dropped."""
    out = {}
    for name, t in inference_state_dict(model).items():
        out[name if name.startswith("lm_head.") else "model." + name] = t
    return out


def export_hf_llama(model, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write an HF Llama checkpoint folder (``config.json`` + ``model.safetensors``), atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(hf_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(hf_llama_config(model.config, tokenizer), indent=2) + "\n")
    save_hf_tokenizer(tokenizer or ByteTokenizer(), out)  # tokenizer.json + tokenizer_config.json: AutoTokenizer
    return out


def artifact_size(path: str | os.PathLike) -> int:
    """Total bytes of the files in an artefact folder (or of one file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv=None) -> int:
    """``python -m course_lib.export RUN_DIR OUT_DIR``: the latest good checkpoint of a run (single
    file or sharded) -> ``OUT_DIR/model.safetensors`` + ``config.json``."""
    p = argparse.ArgumentParser(
        prog="python -m course_lib.export",
        description="Export a training run's latest good checkpoint (single-file or "
        "sharded by --strategy fsdp) to the inference artefact.",
    )
    p.add_argument("run_dir", help="the training run's folder (its --out-dir)")
    p.add_argument("out_dir", help="folder for model.safetensors + config.json")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="dtype of the stored weights")
    args = p.parse_args(argv)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    try:
        info = export_from_run(args.run_dir, args.out_dir, dtype=dtype)
    except (ExportError, CheckpointError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_FAILED
    kind = "sharded" if is_sharded_run(args.run_dir) else "single-file"
    print(
        f"[export] step {info['step']} ({kind} checkpoint {info['checkpoint'].name}) -> {info['dir']} "
        f"({info['bytes']:,} bytes, {info['tensors']} tensors)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
