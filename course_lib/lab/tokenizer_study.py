"""Lesson 4.1.7's tokenizer measurements: bytes vs BPE on Chinese, English and code.

* ``course_texts()``: text that exists on every machine with the course, split into a training part
  and held-out samples: Python source and its English docstrings from the standard library (files
  split by a hash of their path), and Chinese prose from the course's own lesson sources (one
  lesson held out).
* ``tokens_per_char(tokenizers, samples)``: how many tokens each tokenizer spends per character.
* ``equal_time_bits_per_byte(tokenizers, texts, heldout, seconds)``: one small ``DIYModel`` per
  tokenizer, trained for the same wall-clock budget on the same text (the budget is shared out in
  interleaved slices, so a busy machine slows both alike), then scored on held-out text in **bits
  per byte**: the summed cross-entropy (nats) over the held-out tokens, divided by ``ln 2`` and by
  the number of UTF-8 bytes those tokens stand for. Loss per *token* is not comparable across
  tokenizers (a BPE token carries several bytes); loss per *byte* is (nanochat reports the same).
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ModelConfig, pick
from ..data import stdlib_sources
from ..model import DIYModel
from .paths import repo_root

CJK = re.compile(r"[\u4e00-\u9fff]")


def _held(key: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


def _chinese_lines(path: Path) -> list[str]:
    """Markdown prose lines of a jupytext source that are mostly Chinese characters."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# ") or line.startswith("# %%"):
            continue
        text = line[2:].strip()
        if len(text) >= 20 and len(CJK.findall(text)) >= 0.5 * len(text):
            out.append(text)
    return out


def course_texts(max_code_bytes: int | None = None, heldout_fraction: float = 0.05, heldout_lesson: str = "4.2.6"):
    """``{"train": [documents], "heldout": {"zh": str, "en": str, "code": str}, "sizes": {...}}``.

    Code: standard-library ``.py`` files (up to ``max_code_bytes``, default 6 MB, 1.5 MB in quick
    mode); a file is held out when the SHA-256 of its path falls in the first ``heldout_fraction``.
    English: the docstrings of the held-out files. Chinese: the mostly-Chinese prose lines of the
    course's lesson sources; lesson ``heldout_lesson`` is held out, the others are trained on."""
    limit = max_code_bytes or pick(6_000_000, 1_500_000)
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    code_held: list[str] = []
    en_held: list[str] = []
    read = 0
    for path, src in stdlib_sources(root):
        if read >= limit:
            break
        read += len(src.encode("utf-8"))
        if not _held(path.relative_to(root).as_posix(), heldout_fraction):
            train.append(src)
            continue
        code_held.append(src)
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and doc.isascii() and len(doc) > 40:
                    en_held.append(doc)
    zh_train, zh_held = [], []
    for p in sorted((repo_root() / "notebooks" / "src").glob("*.py")):
        (zh_held if p.name.startswith(heldout_lesson + "-") else zh_train).extend(_chinese_lines(p))
    train.append("\n".join(zh_train))
    heldout = {"zh": "\n".join(zh_held), "en": "\n\n".join(en_held), "code": "\n\n".join(code_held)}
    sizes = {
        "train_bytes": sum(len(t.encode("utf-8")) for t in train),
        "train_zh_chars": sum(len(t) for t in zh_train),
        **{f"heldout_{k}_chars": len(v) for k, v in heldout.items()},
    }
    return {"train": train, "heldout": heldout, "sizes": sizes}


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """``(vocab_size,)`` float: how many UTF-8 bytes each token id stands for (0 for <pad>/<eos>)."""
    n = tokenizer.vocab_size
    if hasattr(tokenizer, "token_bytes"):
        return torch.tensor([len(tokenizer.token_bytes(i)) for i in range(n)], dtype=torch.float64)
    return torch.tensor([1.0 if i < 256 else 0.0 for i in range(n)], dtype=torch.float64)  # bytes


def tokens_per_char(tokenizers: dict, samples: dict[str, str]) -> list[dict]:
    """One row per text kind: characters, UTF-8 bytes per character, and tokens per character of
    each tokenizer (and the ratio of the last tokenizer to the first)."""
    rows = []
    names = list(tokenizers)
    for kind, text in samples.items():
        row = {"text": kind, "chars": len(text), "bytes/char": round(len(text.encode("utf-8")) / len(text), 2)}
        counts = {name: len(tok.encode(text)) for name, tok in tokenizers.items()}
        for name in names:
            row[f"{name} tokens/char"] = round(counts[name] / len(text), 3)
        row[f"{names[-1]}/{names[0]}"] = round(counts[names[-1]] / counts[names[0]], 3)
        rows.append(row)
    return rows


def small_model_config(vocab_size: int, seq_len: int = 256) -> ModelConfig:
    """The model both tokenizers get: the same body; only the embedding table (tied with the output
    layer) grows with the vocabulary."""
    return ModelConfig(
        vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, max_seq_len=seq_len
    )


@torch.no_grad()
def bits_per_byte(model, tokens: torch.Tensor, byte_lengths: torch.Tensor, seq_len: int) -> float:
    """Held-out bits per byte: non-overlapping windows of ``seq_len`` targets over ``tokens``; the
    summed NLL (nats) over every target / ln 2 / the bytes those targets stand for."""
    model.eval()
    nll, nbytes = 0.0, 0.0
    n = (len(tokens) - 1) // seq_len
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    for s in range(0, n, 32):
        logits = model(x[s : s + 32]).logits.float()
        nll += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[s : s + 32].reshape(-1), reduction="sum"))
        nbytes += float(byte_lengths[y[s : s + 32]].sum())
    model.train()
    return nll / math.log(2) / nbytes


def equal_time_bits_per_byte(
    tokenizers: dict,
    texts: Sequence[str],
    heldout: dict[str, str],
    seconds: float | None = None,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    slice_s: float = 0.5,
    seed: int = 0,
    eval_chars: int | None = None,
    keep: dict | None = None,
) -> list[dict]:
    """Train one small model per tokenizer for ``seconds`` of its own wall-clock time each (default 40 s,
    3 s in quick mode), in interleaved slices of ``slice_s``; one row per tokenizer with steps, tokens/s,
    bytes of text per second, and held-out bits per byte per text kind. ``keep``, a dict, receives the
    trained models by tokenizer name (their context is 256 tokens; they train on ``seq_len`` windows)."""
    seconds = seconds or pick(40.0, 3.0)
    eval_chars = eval_chars or pick(60_000, 4_000)  # the first characters of each held-out text
    runs = {}
    for name, tok in tokenizers.items():
        stream = torch.tensor([t for doc in texts for t in tok.encode(doc) + [tok.eos_id]], dtype=torch.long)
        torch.manual_seed(seed)
        model = DIYModel(small_model_config(tok.vocab_size, max(seq_len, 256)))
        runs[name] = {
            "tok": tok,
            "stream": stream,
            "model": model,
            "opt": torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0),
            "gen": torch.Generator().manual_seed(seed),
            "lengths": token_byte_lengths(tok),
            "used": 0.0,
            "steps": 0,
            "train_bytes": 0.0,
        }
    while any(r["used"] < seconds for r in runs.values()):
        for r in runs.values():  # the same slice for each in turn: a busy machine slows both alike
            t_end = r["used"] + slice_s
            while r["used"] < min(t_end, seconds):
                t0 = time.perf_counter()
                starts = torch.randint(0, len(r["stream"]) - seq_len - 1, (batch_size,), generator=r["gen"])
                idx = starts[:, None] + torch.arange(seq_len + 1)
                batch = r["stream"][idx]
                loss = r["model"](batch[:, :-1], targets=batch[:, 1:]).loss
                r["opt"].zero_grad(set_to_none=True)
                loss.backward()
                r["opt"].step()
                r["used"] += time.perf_counter() - t0
                r["steps"] += 1
                r["train_bytes"] += float(r["lengths"][batch[:, 1:]].sum())
    rows = []
    for name, r in runs.items():
        row = {
            "tokenizer": name,
            "vocab": r["tok"].vocab_size,
            "params": sum(p.numel() for p in r["model"].parameters()),
            "train s": round(r["used"], 1),
            "steps": r["steps"],
            "tokens/s": round(r["steps"] * batch_size * seq_len / r["used"]),
            "text bytes/s": round(r["train_bytes"] / r["used"]),
        }
        for kind, text in heldout.items():
            ids = torch.tensor(r["tok"].encode(text[:eval_chars]), dtype=torch.long)
            row[f"bits/byte {kind}"] = round(bits_per_byte(r["model"], ids, r["lengths"], seq_len), 3)
        rows.append(row)
        if keep is not None:
            keep[name] = r["model"].eval()
    return rows
