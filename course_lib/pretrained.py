"""The small trained reference model shipped with the course (lesson 4.2 and bench/ use it).

``course_lib/assets/reference_model/`` holds the inference artefact written by
``tools/train_reference_model.py``: ``model.safetensors`` + ``config.json`` (see ``export.py``)
and ``TRAINING.json`` (the exact training command, configs, corpus SHA-256, final eval loss).
It was trained with ``python -m course_lib.train`` on the Python-stdlib corpus, so lessons can
measure quantization and generation on a model that has actually learned something, without
training in CI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .data import load_corpus, split_tokens, tokenize_corpus
from .export import load_inference

REFERENCE_DIR = Path(__file__).resolve().parent / "assets" / "reference_model"
# The reference run read this many bytes of the stdlib corpus (full mode) and held out 5%.
CORPUS_BYTES = 4_000_000
VAL_FRACTION = 0.05


def reference_info() -> dict:
    """Contents of ``TRAINING.json`` (command, configs, data SHA-256, final eval loss)."""
    path = REFERENCE_DIR / "TRAINING.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with: python tools/train_reference_model.py")
    return json.loads(path.read_text())


def load_reference_model(device="cpu"):
    """``(model, tokenizer)`` of the shipped trained model, in eval mode."""
    if not (REFERENCE_DIR / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no reference model in {REFERENCE_DIR}; rebuild it with: python tools/train_reference_model.py"
        )
    model, tok, _ = load_inference(REFERENCE_DIR, device=device)
    return model, tok


def reference_split() -> tuple[Tensor, Tensor]:
    """(train tokens, held-out tokens) exactly as the reference run split its corpus.

    The corpus is read from *this* interpreter's standard library; if its SHA-256 differs from
    the one recorded at training time (another Python version), the held-out text is still
    text the model never saw in that exact form, but numbers are not comparable across
    machines: a warning says so.
    """
    corpus = load_corpus("stdlib", max_bytes=CORPUS_BYTES)
    try:
        recorded = reference_info()["data"]["sha256"]
    except (FileNotFoundError, KeyError):
        recorded = None
    if recorded and recorded != corpus.sha256:
        warnings.warn(
            "this Python's stdlib differs from the one the reference model was trained on "
            f"(sha256 {corpus.sha256[:12]} vs {recorded[:12]}); perplexities are not comparable "
            "with the recorded ones",
            stacklevel=2,
        )
    return split_tokens(tokenize_corpus(corpus), VAL_FRACTION)


def heldout_tokens() -> Tensor:
    """The reference run's validation split (never trained on)."""
    return reference_split()[1]


def calibration_batch(n_seqs: int = 32, seq_len: int = 128, seed: int = 0) -> Tensor:
    """``(n_seqs, seq_len)`` token windows from the *training* split, e.g. for GPTQ calibration."""
    train, _ = reference_split()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - seq_len - 1, (n_seqs,), generator=g)
    return torch.stack([train[s : s + seq_len].long() for s in starts.tolist()])
