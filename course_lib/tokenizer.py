"""A byte-level BPE tokenizer beside ``ByteTokenizer``, trained with Hugging Face ``tokenizers``.

``ByteTokenizer`` (data.py) needs no training and never meets an unknown character, but a Chinese
character costs 3 tokens and an English word ~5: a 256-token context holds little text. Byte-level
BPE (GPT-2, Llama 3, Qwen) starts from the same 256 bytes and *merges* the most frequent adjacent
pairs until the vocabulary has ``vocab_size`` entries, so frequent words and characters become one
token while any byte sequence still encodes (no unknown tokens either).

* ``train_bpe(texts, vocab_size)`` trains one in seconds on CPU (the Rust trainer of ``tokenizers``);
  ``python -m course_lib.tokenizer --data FILE --vocab-size 2048 --out tokenizer.json`` does it from
  the command line on the learner's corpus (``stdlib``, a .txt/.jsonl file or a folder).
* ``BPETokenizer`` implements the same ``Tokenizer`` protocol as ``ByteTokenizer`` (``encode``,
  ``decode``, ``vocab_size``, ``eos_id``, ``pad_id``, ``describe``). Its special tokens are
  ``<pad>`` (0), ``<eos>`` (1), and the chat markers ``<|im_start|>`` (2), ``<|im_end|>`` (3): one
  token each, never produced by merges of ordinary text.
* ``describe()`` carries the whole tokenizer (its JSON) and its SHA-256, so a training checkpoint is
  self-contained and a resume with another tokenizer is refused by hash; ``save(path)`` writes the
  standard ``tokenizer.json`` that ``transformers.PreTrainedTokenizerFast`` (``AutoTokenizer``) reads.
* ``load_tokenizer(spec)``: ``"byte"`` -> ``ByteTokenizer``; a ``tokenizer.json`` path (or a folder
  holding one) -> ``BPETokenizer``.

The pre-tokenizer isolates ``\\n`` before GPT-2's byte-level split, so no merge crosses a line break:
the chat template's pieces (which end in ``\\n``) tokenize the same alone or together (chat.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .chat import CHAT_TEMPLATE_JINJA, IM_END, IM_START
from .data import ByteTokenizer, DataError, load_corpus
from .fsio import atomic_write_text
from .util import first_line

PAD, EOS = "<pad>", "<eos>"
SPECIAL_TOKENS = (PAD, EOS, IM_START, IM_END)  # ids 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("the BPE tokenizer needs the 'tokenizers' package: pip install tokenizers") from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE behind the course's ``Tokenizer`` protocol (wraps a ``tokenizers.Tokenizer``)."""

    def __init__(self, hf_tokenizer, source: str = "") -> None:
        self._tok = hf_tokenizer
        self.source = source
        self.json = hf_tokenizer.to_str()
        self.sha256 = hashlib.sha256(self.json.encode("utf-8")).hexdigest()
        ids = {t: hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise DataError(
                f"{source or 'tokenizer'}: lacks the special token(s) {missing}; "
                "train it with course_lib.tokenizer.train_bpe (or add them as special tokens)"
            )
        self.pad_id, self.eos_id = ids[PAD], ids[EOS]
        self.im_start_id, self.im_end_id = ids[IM_START], ids[IM_END]
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self._skip = {self.pad_id, self.eos_id}

    # ---- the Tokenizer protocol ------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; ``<pad>``/``<eos>`` are dropped (like ``ByteTokenizer``), the chat markers kept
        as text (a stop string like ``<|im_end|>`` must stay visible)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode([i for i in ids if i not in self._skip], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one token stands for (b"" for <pad>/<eos>); for streaming a character that
        spans several tokens through an incremental decoder."""
        if token_id in self._skip:
            return b""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if piece in SPECIAL_TOKENS:
            return piece.encode("utf-8")
        table = _unicode_to_bytes()
        return bytes(table[c] for c in piece)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def describe(self) -> dict:
        return {
            "type": "bpe",
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "eos_id": self.eos_id,
            "sha256": self.sha256,
            "json": self.json,
        }

    # ---- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (atomically); a folder gets ``folder/tokenizer.json``."""
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True)
            p = p / TOKENIZER_FILE
        atomic_write_text(p, self.json)
        return p

    @classmethod
    def from_json(cls, text: str, source: str = "") -> BPETokenizer:
        try:
            tok = _tokenizers().Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - the Rust side raises plain Exception
            raise DataError(
                f"{source or 'tokenizer'}: not a valid tokenizer.json ({first_line(e)}); "
                "train one with: python -m course_lib.tokenizer --data FILE --out tokenizer.json"
            ) from None
        return cls(tok, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        if not p.is_file():
            raise DataError(
                f"{p}: tokenizer file not found; train one with: "
                "python -m course_lib.tokenizer --data FILE --out tokenizer.json, or use 'byte'"
            )
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read the tokenizer ({e}); check the file") from None
        return cls.from_json(text, str(p))


def train_bpe(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (special tokens and the 256 bytes included)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(
            f"vocab_size: {vocab_size} is too small; byte-level BPE needs at least "
            f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok, source="train_bpe")


def load_tokenizer(spec: str = "byte"):
    """``"byte"`` -> ``ByteTokenizer()``; a path to ``tokenizer.json`` (or its folder) -> ``BPETokenizer``."""
    if spec in ("", "byte"):
        return ByteTokenizer()
    return BPETokenizer.from_file(spec)


def tokenizer_from_description(desc: dict):
    """Rebuild from ``describe()``: the byte tokenizer, or a BPE whose JSON travels in the description."""
    if desc.get("type") == "bpe":
        if "json" not in desc:
            raise DataError("tokenizer description of type 'bpe' has no 'json'; load it from its tokenizer.json")
        tok = BPETokenizer.from_json(desc["json"], "checkpoint tokenizer")
        if desc.get("sha256") and desc["sha256"] != tok.sha256:
            raise DataError("checkpoint tokenizer: its SHA-256 does not match its JSON; the checkpoint was edited")
        return tok
    if desc.get("type") == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer type {desc.get('type')!r}; expected 'byte' or 'bpe'")


def file_description(desc: dict) -> dict:
    """``describe()`` for a config file: without the BPE's JSON (that goes to ``tokenizer.json``)."""
    return {k: v for k, v in desc.items() if k != "json"}


def save_artifact_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """An inference artefact carries its tokenizer: a BPE as ``folder/tokenizer.json`` (bytes need no file)."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(Path(folder) / TOKENIZER_FILE)


def load_artifact_tokenizer(folder: str | os.PathLike, desc: dict):
    """The tokenizer an artefact's ``config.json`` names: bytes, or its ``tokenizer.json`` (hash checked)."""
    if desc.get("type") != "bpe":
        return tokenizer_from_description(desc)
    tok = BPETokenizer.from_file(Path(folder) / TOKENIZER_FILE)
    if desc.get("sha256") and desc["sha256"] != tok.sha256:
        raise DataError(
            f"{Path(folder) / TOKENIZER_FILE}: not the tokenizer config.json names (sha256 "
            f"{tok.sha256[:12]} vs {str(desc['sha256'])[:12]}); export the model and its tokenizer together"
        )
    return tok


def tokenizer_name(desc: dict) -> str:
    """One short line naming a tokenizer (for resume errors)."""
    if desc.get("type") == "bpe":
        return f"bpe(vocab_size={desc.get('vocab_size')}, sha256 {str(desc.get('sha256'))[:12]})"
    return f"{desc.get('type')}(vocab_size={desc.get('vocab_size')})"


def same_tokenizer(a: dict, b: dict) -> bool:
    """Two ``describe()`` dicts name the same tokenizer (BPE: by the hash of its JSON)."""
    keys = ("type", "vocab_size", "pad_id", "eos_id", "sha256")
    return all(a.get(k) == b.get(k) for k in keys)


# --------------------------------------------------------------------------------------------
# Hugging Face files: tokenizer.json + tokenizer_config.json, for AutoTokenizer
# --------------------------------------------------------------------------------------------
def byte_level_hf_json() -> str:
    """``ByteTokenizer`` as a ``tokenizers`` JSON: a BPE with no merges whose 256 byte symbols have
    ids 0..255 (the bytes' own values), ``<pad>``=256, ``<eos>``=257: the same ids for any text."""
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = tk.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS])
    return tok.to_str()


def _bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer maps bytes to)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_U2B: dict = {}


def _unicode_to_bytes() -> dict:
    if not _U2B:
        _U2B.update({c: b for b, c in _bytes_to_unicode().items()})
    return _U2B


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes of one token for any tokenizer: ``tokenizer.token_bytes`` when it has one, else the
    byte tokenizer's rule (ids < 256 are bytes, the rest are <pad>/<eos>: nothing)."""
    if hasattr(tokenizer, "token_bytes"):
        return tokenizer.token_bytes(token_id)
    return bytes([token_id]) if 0 <= token_id < 256 else b""


def save_hf_tokenizer(tokenizer, out_dir: str | os.PathLike) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` (+ the chat template) for ``AutoTokenizer``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, BPETokenizer):
        text, extra = tokenizer.json, [IM_START, IM_END]
    else:
        text, extra = byte_level_hf_json(), []
    atomic_write_text(out / TOKENIZER_FILE, text)
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "eos_token": EOS,
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        "additional_special_tokens": extra,
        "chat_template": CHAT_TEMPLATE_JINJA,
    }
    atomic_write_text(out / "tokenizer_config.json", json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# python -m course_lib.tokenizer
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.tokenizer",
        description="Train a byte-level BPE tokenizer (HF tokenizers) on your corpus.",
    )
    p.add_argument(
        "--data", default="stdlib", help="'stdlib', a .txt/.jsonl file or a folder of them (default: stdlib)"
    )
    p.add_argument(
        "--vocab-size", type=int, default=2048, help="entries incl. 256 bytes + 4 special tokens (default: 2048)"
    )
    p.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen this often (default: 2)")
    p.add_argument("--out", default="tokenizer.json", help="file (or folder) to write (default: tokenizer.json)")
    args = p.parse_args(argv)
    try:
        corpus = load_corpus(args.data)
        t0 = time.perf_counter()
        tok = train_bpe(corpus.documents, args.vocab_size, args.min_frequency)
        secs = time.perf_counter() - t0
        path = tok.save(args.out)
    except (DataError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    n_chars = corpus.num_chars
    n_tok = sum(len(t) for t in tok.encode_batch(corpus.documents))
    print(
        f"[tokenizer] {tok.vocab_size} tokens trained on {n_chars:,} chars in {secs:.1f}s -> {path} "
        f"(sha256 {tok.sha256[:12]}; {n_tok / n_chars:.3f} tokens/char on its own corpus)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
