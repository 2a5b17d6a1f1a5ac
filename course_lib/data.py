"""Text in, token batches out: tokenizer, corpus, and a resumable streaming dataset.

* ``Tokenizer`` is the interface; ``ByteTokenizer`` (UTF-8 bytes, handles Chinese and any other
  text, no training needed) is the default. A learner can pass their own object with the same
  methods (``encode``, ``decode``, ``vocab_size``, ``eos_id``, ``pad_id``, ``describe``).
* ``load_corpus("stdlib")`` reads real text that exists on every machine with no download: the
  Python standard library's own source files, from the running interpreter. It records which
  files were read and a SHA-256 of the text, so a run says exactly what it trained on.
  ``load_corpus(path)`` reads the learner's own ``.txt`` / ``.jsonl`` file or a folder of them.
* ``StreamingTokenDataset`` is an ``IterableDataset`` that yields whole batches, shards the
  sample order by distributed rank *and* by DataLoader worker (no sample read twice or
  skipped within an epoch), and can resume from a saved position.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .config import pick


class DataError(ValueError):
    """Input data is missing, empty or unreadable; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def describe(self) -> dict: ...


class ByteTokenizer:
    """Byte-level tokenizer: token = one UTF-8 byte (0..255), plus <pad>=256 and <eos>=257.

    A Chinese character is 3 bytes, so 3 tokens: no unknown tokens, ever. Decoding replaces an
    incomplete UTF-8 sequence (e.g. a sample cut mid-character) with U+FFFD instead of failing.
    """

    vocab_size = 258
    pad_id = 256
    eos_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int32)

    def decode(self, ids: Sequence[int]) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"type": "byte", "vocab_size": self.vocab_size, "pad_id": self.pad_id, "eos_id": self.eos_id}


def tokenizer_from_description(desc: dict) -> Tokenizer:
    """Rebuild the byte tokenizer from ``describe()``; ``course_lib.tokenizer.tokenizer_from_description``
    also rebuilds a BPE (it builds on this module, so this one cannot import it)."""
    if desc.get("type") == "byte":
        return ByteTokenizer()
    raise DataError(
        f"tokenizer type {desc.get('type')!r}: rebuild it with course_lib.tokenizer.tokenizer_from_description"
    )


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
_STDLIB_SKIP = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "ensurepip",
    "turtledemo",
    "__pycache__",
    "tkinter",
    "pydoc_data",
    "encodings",
}


@dataclass
class Corpus:
    """Documents plus a record of where they came from."""

    documents: list[str]
    source: str
    files: list[str] = field(default_factory=list)
    sha256: str = ""

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "num_files": len(self.files),
            "files": self.files,
            "num_documents": len(self.documents),
            "num_chars": self.num_chars,
            "sha256": self.sha256,
        }


def _hash_documents(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"{path}: cannot read ({e.strerror or type(e).__name__}); check the file's permissions"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {e.start} ({e.reason}); "
            "convert the file to UTF-8 (e.g. `iconv -f GBK -t UTF-8`) or remove it"
        ) from None


def stdlib_py_files(root: Path) -> list[Path]:
    """The standard library's ``.py`` files under ``root`` (test suites, GUI demos and the like
    left out), in walk order: folders and files sorted within each folder."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        paths.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return paths


def stdlib_sources(root: Path, paths: Sequence[Path] | None = None) -> Iterator[tuple[Path, str]]:
    """``(path, source)`` of every file of ``stdlib_py_files(root)`` (or ``paths``) that reads as UTF-8."""
    for p in stdlib_py_files(root) if paths is None else paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of stdlib files are deliberately not UTF-8; skip them
        yield p, text


def stdlib_corpus(max_bytes: int | None = None) -> Corpus:
    """The Python standard library's ``.py`` sources, in sorted path order, up to ``max_bytes``."""
    max_bytes = max_bytes or pick(4_000_000, 400_000)
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(stdlib_py_files(root), key=lambda p: p.relative_to(root).as_posix())
    docs, files, total = [], [], 0
    for p, text in stdlib_sources(root, paths):
        if not text.strip():
            continue
        docs.append(text)
        files.append(p.relative_to(root).as_posix())
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    if not docs:
        raise DataError(f"no Python source files found under {root}; pass your own text with data=PATH")
    return Corpus(docs, source=f"stdlib:{root}", files=files, sha256=_hash_documents(docs))


def files_corpus(path: str | os.PathLike) -> Corpus:
    """A ``.txt`` file (one document), a ``.jsonl`` file (one ``{"text": ...}`` per line), or a
    folder searched recursively for both, in sorted order."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: data path does not exist; pass a .txt/.jsonl file, a folder of them, or 'stdlib'")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"{root}: folder has no .txt or .jsonl files; put your text in .txt or .jsonl files")
    else:
        if root.suffix not in (".txt", ".jsonl"):
            raise DataError(f"{root}: unsupported file type {root.suffix!r}; use .txt or .jsonl")
        files = [root]
    docs: list[str] = []
    for f in files:
        text = _read_text(f)
        if f.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f'{f}:{i}: not valid JSON ({e.msg}); each line must be an object like {{"text": "..."}}'
                    ) from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(
                        f'{f}:{i}: expected an object with a string field "text"; write each line as {{"text": "..."}}'
                    )
                if obj["text"]:
                    docs.append(obj["text"])
        elif text.strip():
            docs.append(text)
    if not docs:
        raise DataError(f"{root}: no text found (files are empty); add some text or pick another path")
    rel = [str(f.relative_to(root)) if root.is_dir() else f.name for f in files]
    return Corpus(docs, source=f"files:{root}", files=rel, sha256=_hash_documents(docs))


def load_corpus(data: str = "stdlib", max_bytes: int | None = None) -> Corpus:
    """``"stdlib"`` for the built-in corpus, anything else is a path."""
    return stdlib_corpus(max_bytes) if data == "stdlib" else files_corpus(data)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer | None = None) -> Tensor:
    """One long 1-D int32 tensor of token ids, documents separated by ``eos_id``."""
    tok = tokenizer or ByteTokenizer()
    parts = []
    eos = torch.tensor([tok.eos_id], dtype=torch.int32)
    for d in corpus.documents:
        ids = tok.encode_tensor(d) if hasattr(tok, "encode_tensor") else torch.tensor(tok.encode(d), dtype=torch.int32)
        parts.extend([ids, eos])
    return torch.cat(parts)


def split_tokens(tokens: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Last ``val_fraction`` of the stream is held out for evaluation."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
def num_chunks(tokens: Tensor, seq_len: int) -> int:
    return max(0, (len(tokens) - 1) // seq_len)


def get_chunk(tokens: Tensor, index: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """Sample ``index``: inputs ``tokens[i*T : i*T+T]`` and targets shifted by one."""
    start = index * seq_len
    piece = tokens[start : start + seq_len + 1].long()
    return piece[:-1], piece[1:]


class TokenChunkDataset(Dataset):
    """Map-style: non-overlapping windows of ``seq_len`` tokens (for DistributedSampler)."""

    def __init__(self, tokens: Tensor, seq_len: int) -> None:
        self.tokens, self.seq_len = tokens, seq_len
        self.n = num_chunks(tokens, seq_len)
        if self.n == 0:
            raise DataError(f"text too short: {len(tokens)} tokens cannot fill one sample of seq_len={seq_len}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return get_chunk(self.tokens, i, self.seq_len)


def check_same_data(dataset, state: dict) -> None:
    """Refuse a saved data position made with other data settings (it would point elsewhere)."""
    for key in ("seed", "batch_size", "seq_len", "fingerprint"):
        if key in state and state[key] != getattr(dataset, key):
            raise DataError(
                f"saved data position was made with {key}={state[key]!r} but this run has "
                f"{key}={getattr(dataset, key)!r}; resume with the same data settings or start a new out_dir"
            )


@dataclass
class DataPosition:
    """Where one rank is in its endless stream of batches: the resumable state of a loader.

    Stateful in torchtitan's sense: ``state_dict()`` takes no argument and ``load_state_dict``
    restores it. The position is one number, ``batches_consumed`` (batches numbered globally
    across epochs); the other fields describe the stream it counts in, and a saved position
    made for a different stream (seed, sizes, data, loader) is refused instead of pointing
    elsewhere. Both loaders (``StreamingTokenDataset`` and ``dataloading.DistributedChunkBatches``)
    hold one. The training loop sets ``batches_consumed`` to the batches it *used* (a DataLoader
    prefetches ahead, so the loader itself cannot know).
    """

    seed: int
    batch_size: int
    seq_len: int
    rank: int
    world_size: int
    fingerprint: str
    loader: str  # "stream" | "map": the two visit samples in different orders
    batches_per_epoch: int
    batches_consumed: int = 0

    def epoch_of(self, batches_consumed: int | None = None) -> int:
        n = self.batches_consumed if batches_consumed is None else batches_consumed
        return n // self.batches_per_epoch

    def state_dict(self) -> dict:
        return {
            "batches_consumed": int(self.batches_consumed),
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "fingerprint": self.fingerprint,
            "loader": self.loader,
        }

    def load_state_dict(self, state: dict) -> None:
        check_same_data(self, state)
        saved = state.get("loader", "stream")  # positions saved before the key existed were streams
        if saved != self.loader:
            raise DataError(
                f"the checkpoint was written with loader={saved!r}, this run uses loader={self.loader!r}; "
                "resume with the same loader (the two loaders visit samples in different orders)"
            )
        self.batches_consumed = int(state["batches_consumed"])


class PositionMixin:
    """The position protocol both loaders share, delegated to their ``DataPosition``."""

    position: DataPosition

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """The position to save; ``batches_consumed`` (what the training loop used) updates it first."""
        if batches_consumed is not None:
            self.position.batches_consumed = int(batches_consumed)
        return self.position.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next iteration starts at its batch."""
        self.position.load_state_dict(state)

    def epoch_of(self, batches_consumed: int) -> int:
        return self.position.epoch_of(batches_consumed)


class StreamingTokenDataset(PositionMixin, IterableDataset):
    """Batches of ``(x, y)`` forever, epoch after epoch, sharded by rank and worker, resumable.

    Order: each epoch draws a permutation of all sample indices from ``seed + epoch``. Rank
    ``r`` of ``world_size`` takes ``perm[r::world_size]`` (truncated so every rank has the same
    count), cut into full batches; the remainder, fewer than ``world_size * batch_size``
    samples, sits out this epoch (a different one each epoch), like ``drop_last=True``.

    Position: the only state is ``batches_consumed`` by this rank. Batches are numbered
    globally across epochs (j = 0, 1, 2, ...). With ``W`` DataLoader workers, worker ``w``
    produces batches ``start + w, start + w + W, ...``; the DataLoader reads its workers in
    round-robin order, so the training loop sees ``start, start + 1, ...`` exactly as with no
    workers. The loop counts the batches it *used* (the DataLoader prefetches ahead, so the
    dataset cannot know) and saves that count; ``load_state_dict`` makes the next iteration
    start there.

    Use it with ``DataLoader(ds, batch_size=None, num_workers=W)``: the dataset already batches.
    """

    def __init__(
        self,
        tokens: Tensor,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fingerprint: str = "",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_samples = num_chunks(tokens, seq_len)
        self.per_rank = self.n_samples // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"not enough text for one batch: {len(tokens)} tokens give {self.n_samples} samples of "
                f"seq_len={seq_len}, fewer than batch_size={batch_size} x world_size={world_size}; "
                "use more text, a smaller batch_size or a shorter seq_len"
            )
        self.fingerprint = fingerprint
        self.position = DataPosition(
            seed, batch_size, seq_len, rank, world_size, fingerprint, "stream", self.batches_per_epoch
        )

    # ---- order ---------------------------------------------------------------------------
    def epoch_permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_samples, generator=g)

    def batch_indices(self, j: int) -> Tensor:
        """Sample indices of this rank's global batch number ``j``."""
        epoch, b = divmod(j, self.batches_per_epoch)
        mine = self.epoch_permutation(epoch)[self.rank :: self.world_size][: self.per_rank]
        return mine[b * self.batch_size : (b + 1) * self.batch_size]

    def make_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        xs, ys = zip(*(get_chunk(self.tokens, int(i), self.seq_len) for i in idx), strict=True)
        return torch.stack(xs), torch.stack(ys)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        j = self.position.batches_consumed + wid
        cached_epoch, perm_mine = -1, None
        while True:
            epoch, b = divmod(j, self.batches_per_epoch)
            if epoch != cached_epoch:  # one permutation per epoch, not per batch
                perm_mine = self.epoch_permutation(epoch)[self.rank :: self.world_size][: self.per_rank]
                cached_epoch = epoch
            yield self.make_batch(perm_mine[b * self.batch_size : (b + 1) * self.batch_size])
            j += nw


def build_datasets(
    data: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    val_fraction: float = 0.05,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Tokenizer | None = None,
    max_bytes: int | None = None,
):
    """Corpus -> tokens -> (train StreamingTokenDataset, val tokens, corpus)."""
    corpus = load_corpus(data, max_bytes)
    tokens = tokenize_corpus(corpus, tokenizer)
    train_tokens, val_tokens = split_tokens(tokens, val_fraction)
    fp = hashlib.sha256(f"{corpus.sha256}:{len(train_tokens)}".encode()).hexdigest()[:16]
    try:
        train = StreamingTokenDataset(
            train_tokens, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size, fingerprint=fp
        )
    except DataError as e:  # name the data source: the dataset only sees tokens
        raise DataError(f"{corpus.source.removeprefix('files:')}: {e}") from None
    return train, val_tokens, corpus


def eval_batches(
    val_tokens: Tensor, seq_len: int, batch_size: int, max_batches: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Fixed, unshuffled evaluation batches (the same every time, so eval losses compare)."""
    n = num_chunks(val_tokens, seq_len)
    count = 0
    for start in range(0, n, batch_size):
        if count >= max_batches:
            break
        idx = range(start, min(n, start + batch_size))
        xs, ys = zip(*(get_chunk(val_tokens, i, seq_len) for i in idx), strict=True)
        yield torch.stack(xs), torch.stack(ys)
        count += 1
