"""Generation demos that read like text: sampling settings a person would use, a fixed seed, a stop.

Greedy decoding from a small byte-level model falls into loops ("the the the ..."). People sample
instead: a temperature below 1 sharpens the distribution, top-k cuts the long tail of unlikely
bytes, and a fixed ``torch.Generator`` seed makes the text reproducible. Generation stops at the
first blank line (a newline pair: the end of a function or paragraph), at EOS, or after
``max_new_tokens``.

``show_sample`` prints the text between two marker lines so that tests/test_demo_text.py can find
every demo's generated text in a stored notebook and check it (``distinct_ngram_ratio``,
``whitespace_fraction``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator

import torch

from ..generate import stream_generate

TEMPERATURE = 0.8
TOP_K = 40
STOP = "\n\n"
BEGIN = "── sample"
END = "── end of sample ──"
_BLOCK = re.compile(r"^── sample[^\n]*──\n(.*?)\n?── end of sample ──$", re.S | re.M)


def settings_line(
    seed: int, temperature: float = TEMPERATURE, top_k: int | None = TOP_K, top_p: float | None = None
) -> str:
    parts = [f"seed {seed}", f"temperature {temperature}"]
    if top_k:
        parts.append(f"top-k {top_k}")
    if top_p:
        parts.append(f"top-p {top_p}")
    return f"{BEGIN} ({', '.join(parts)}, stop at a blank line or EOS) ──"


def stream_sample(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 160,
    *,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    top_k: int | None = TOP_K,
    top_p: float | None = None,
    stop: str | None = STOP,
) -> Iterator[str]:
    """Yield the generated text piece by piece; stop before the first ``stop`` string."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    text = ""
    for piece in stream_generate(
        model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen
    ):
        new = text + piece
        if stop and stop in new:  # the stop string may straddle two pieces
            cut = new.index(stop)
            if cut > len(text):
                yield new[len(text) : cut]
            return
        text = new
        yield piece


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int = 160, **kw) -> str:
    """The generated text (without the prompt) as one string; same arguments as ``stream_sample``."""
    return "".join(stream_sample(model, tokenizer, prompt, max_new_tokens, **kw))


def show_sample(model, tokenizer, prompt: str, max_new_tokens: int = 160, **kw) -> str:
    """Print prompt + generated text between marker lines, streaming it; return the generated text.
    Same arguments as ``stream_sample``; the first line states the sampling settings used."""
    call = inspect.signature(stream_sample).bind(model, tokenizer, prompt, max_new_tokens, **kw)
    call.apply_defaults()
    a = call.arguments
    print(settings_line(a["seed"], a["temperature"], a["top_k"], a["top_p"]))
    print(prompt, end="", flush=True)
    pieces = []
    for piece in stream_sample(**a):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print("\n" + END)
    return "".join(pieces)


def sample_blocks(text: str) -> list:
    """Every text printed by ``show_sample`` (prompt included) found in ``text``."""
    return _BLOCK.findall(text)


def distinct_ngram_ratio(text: str, n: int = 4) -> float:
    """Distinct character n-grams / all character n-grams (1.0 = no n-gram repeats; loops score low)."""
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def whitespace_fraction(text: str) -> float:
    """Share of whitespace characters (1.0 for an empty string: nothing visible)."""
    return sum(ch.isspace() for ch in text) / len(text) if text else 1.0
