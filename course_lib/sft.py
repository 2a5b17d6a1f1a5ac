"""Supervised fine-tuning (SFT): conversations in, packed rows with an assistant-only loss out.

The same Trainer, checkpoints, resume and kill guarantees as pretraining; what changes is the data:

1. **Records**: JSONL, one conversation per line, ``{"messages": [{"role", "content"}, ...]}`` or
   ``{"prompt": ..., "response": ...}`` (chat.py validates both). ``data="stdlib"`` builds instruction
   pairs from the Python standard library (no download): docstring -> function and function ->
   docstring, with a held-out split by function (``stdlib_instruction_pairs``).
2. **Template + mask** (``encode_example``): ``chat.encode_chat`` renders the ChatML template and marks
   the assistant's tokens; an ``<eos>`` closes the conversation (so ``generate()`` stops by itself with
   any tokenizer). Targets are the next tokens, ``-100`` wherever the *target* is not an assistant
   token: the loss is computed on the answers only, never on the prompt (the model ignores -100).
3. **Packing** (``pack_examples``): several conversations per row of ``seq_len`` tokens, each with its
   own ``document_id``; the model attends only within a document (block-diagonal causal mask) and the
   positions restart per document, so a packed row computes exactly what one row per conversation
   with padding would (``pad_examples``; tests/unit/test_sft.py checks loss and gradients), without
   spending compute on padding.
4. **Batches** (``PackedSFTDataset``): the packed rows, shuffled per epoch, sharded by rank and worker
   and resumable exactly like pretraining's ``StreamingTokenDataset`` (it is one, with rows instead
   of windows); batches are ``(x, y, document_ids)``.

``python -m course_lib.train --task sft --data FILE.jsonl --init RUN_OR_ARTEFACT`` starts from a
trained model (a run folder, an inference artefact, or ``reference`` for the shipped one).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import random
import sysconfig
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .chat import END_OF_TURN, encode_chat, messages_from_record, validate_messages
from .config import ConfigError, pick
from .data import Corpus, DataError, StreamingTokenDataset, _read_text, stdlib_sources
from .export import CONFIG_FILE, ExportError, load_inference, load_training_checkpoint
from .fsio import atomic_write_text
from .generate import generate
from .pretrained import REFERENCE_DIR
from .tokenizer import load_tokenizer, same_tokenizer, tokenizer_name
from .util import cdiv

IGNORE = -100
Example = tuple[list[int], list[int]]  # (input ids, target ids with -100 off the assistant's tokens)


# --------------------------------------------------------------------------------------------
# 1. Records
# --------------------------------------------------------------------------------------------
def _function_pairs(src: str, module: str, max_chars: int) -> Iterator[tuple[str, str, str]]:
    """(name, one-paragraph docstring summary, code without the docstring) of short documented functions."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return
    lines = src.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or len(node.body) < 2 or node.decorator_list:
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        if not 15 <= len(summary) <= 100 or not summary.isascii():
            continue
        ds = node.body[0]
        keep = lines[node.lineno - 1 : ds.lineno - 1] + lines[ds.end_lineno : node.end_lineno]
        code = textwrap.dedent("\n".join(keep)).strip("\n")
        if not code.isascii() or len(code) + len(summary) > max_chars or "<|" in code:
            continue
        yield f"{module}:{node.name}", summary, code


def _heldout(key: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass
class SFTSplit:
    train: list[dict]
    heldout: list[dict]
    source: str
    sha256: str


def stdlib_instruction_pairs(
    heldout_fraction: float = 0.05, max_chars: int = 160, max_bytes: int | None = None
) -> SFTSplit:
    """Instruction pairs from the standard library's short documented functions, both directions:

    * ``doc2code``: "Write a Python function: <docstring summary>" -> the function (docstring removed);
    * ``code2doc``: "Explain this Python function in one sentence:\\n<code>" -> the summary.

    A function is held out (both its pairs) when the SHA-256 of ``module:name`` falls in the first
    ``heldout_fraction``: held-out instructions come from functions SFT never saw in either direction.
    ``max_chars`` (code + summary) keeps a whole conversation inside the reference model's 256 bytes;
    ``max_bytes`` stops after that much source read (default: all of it; 1 MB in quick mode).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    limit = max_bytes or pick(None, 1_000_000)
    train, held = [], []
    h = hashlib.sha256()
    read = 0
    for path, src in stdlib_sources(root):
        if limit is not None and read >= limit:
            break
        read += len(src)
        module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        for key, summary, code in _function_pairs(src, module, max_chars):
            pairs = [
                ("doc2code", f"Write a Python function: {summary}", code),
                ("code2doc", f"Explain this Python function in one sentence:\n{code}", summary),
            ]
            dest = held if _heldout(key, heldout_fraction) else train
            for kind, prompt, answer in pairs:
                dest.append(
                    {
                        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                        "source": key,
                        "kind": kind,
                    }
                )
                h.update(f"{key}\0{prompt}\0{answer}\0".encode())
    if not train:
        raise DataError(f"no documented functions found under {root}; pass your own SFT data with --data FILE.jsonl")
    return SFTSplit(train, held, source=f"stdlib-instructions:{root}", sha256=h.hexdigest())


def write_jsonl(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """One JSON object per line (UTF-8, not ASCII-escaped)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return p


def read_sft_jsonl(path: str | os.PathLike) -> list[list[dict]]:
    """Conversations of a JSONL file; a bad line is one ``DataError`` naming ``file:line`` and the field."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"{p}: SFT data file not found; pass a .jsonl file with one "
            '{"messages": [...]} or {"prompt": ..., "response": ...} per line, or \'stdlib\''
        )
    if p.suffix != ".jsonl":
        raise DataError(f"{p}: SFT data must be a .jsonl file (one conversation per line)")
    out = []
    for i, line in enumerate(_read_text(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{i}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        try:
            out.append(messages_from_record(rec, f"{p}:{i}"))
        except ValueError as e:
            raise DataError(str(e)) from None
    if not out:
        raise DataError(f"{p}: no conversations found (the file is empty); add one JSON object per line")
    return out


def load_sft_conversations(
    data: str, heldout_fraction: float = 0.05
) -> tuple[list[list[dict]], list[list[dict]], Corpus]:
    """``(train, heldout, corpus-record)``: ``"stdlib"`` -> the built-in pairs and their held-out split;
    a ``.jsonl`` path -> its conversations, the last ``heldout_fraction`` held out (at least one when
    there are two or more)."""
    if data == "stdlib":
        split = stdlib_instruction_pairs(heldout_fraction)
        train = [r["messages"] for r in split.train]
        held = [r["messages"] for r in split.heldout]
        source, sha = split.source, split.sha256
    else:
        convs = read_sft_jsonl(data)
        n_held = int(len(convs) * heldout_fraction) or (1 if heldout_fraction > 0 and len(convs) > 1 else 0)
        train, held = convs[: len(convs) - n_held], convs[len(convs) - n_held :]
        source = f"files:{data}"
        sha = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    corpus = Corpus(
        [json.dumps(m, ensure_ascii=False) for m in train],
        source=source,
        files=[] if data == "stdlib" else [Path(data).name],
        sha256=sha,
    )
    return train, held, corpus


# --------------------------------------------------------------------------------------------
# 2. Template + loss mask
# --------------------------------------------------------------------------------------------
def encode_example(messages: Sequence[dict], tokenizer) -> Example:
    """``(input_ids, targets)`` of one conversation, both of length ``n - 1`` for its ``n`` tokens.

    ``targets[t]`` is the token after ``input_ids[t]`` when that token is an assistant's (content, the
    closing ``<|im_end|>`` and the final ``<eos>``), else ``-100``."""
    ids, mask = encode_chat(messages, tokenizer)
    ids, mask = ids + [tokenizer.eos_id], mask + [True]
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
    return ids[:-1], targets


# --------------------------------------------------------------------------------------------
# 3. Packing (and the padded reference it must equal)
# --------------------------------------------------------------------------------------------
def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy packing in order: ``(x, y, document_ids)``, each ``(rows, seq_len)`` int64.

    An example goes into the current row if it fits, else starts a new one. Documents in a row have
    ids 0, 1, 2, ...; the padding at a row's end is one more document (it attends only to itself) with
    targets -100. An example longer than ``seq_len`` is refused (its answer would be cut)."""
    rows: list[list[Example]] = []
    used = seq_len + 1  # forces a new row for the first example
    for i, (inp, tgt) in enumerate(examples):
        if len(inp) > seq_len:
            raise DataError(
                f"example {i}: {len(inp) + 1} tokens do not fit seq_len={seq_len}; "
                "raise seq_len (up to the model's max_seq_len) or drop long conversations"
            )
        if used + len(inp) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((inp, tgt))
        used += len(inp)
    x = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    y = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    doc = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for d, (inp, tgt) in enumerate(row):
            n = len(inp)
            x[r, t : t + n] = torch.tensor(inp)
            y[r, t : t + n] = torch.tensor(tgt)
            doc[r, t : t + n] = d
            t += n
        doc[r, t:] = len(row)
    return x, y, doc


def pad_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """One example per row, right-padded (targets -100 on padding): the reference packing must equal."""
    x = torch.full((len(examples), seq_len), pad_id, dtype=torch.long)
    y = torch.full((len(examples), seq_len), IGNORE, dtype=torch.long)
    for r, (inp, tgt) in enumerate(examples):
        x[r, : len(inp)] = torch.tensor(inp)
        y[r, : len(tgt)] = torch.tensor(tgt)
    return x, y


def packing_efficiency(y: Tensor) -> float:
    """Share of target positions that are trained (not -100)."""
    return float((y != IGNORE).float().mean())


# --------------------------------------------------------------------------------------------
# 4. Batches: resumable, sharded, like pretraining
# --------------------------------------------------------------------------------------------
class PackedSFTDataset(StreamingTokenDataset):
    """Packed rows as a ``StreamingTokenDataset``: same order, sharding, workers and resumable position;
    a sample is a packed row instead of a window, and a batch is ``(x, y, document_ids)``."""

    def __init__(self, x: Tensor, y: Tensor, doc: Tensor, batch_size: int, **sharding) -> None:
        """``sharding``: ``seed``, ``rank``, ``world_size``, ``fingerprint``, as ``StreamingTokenDataset``."""
        self.x, self.y, self.doc = x, y, doc
        seq_len = x.shape[1]
        # the parent counts samples from a token stream: give it one of exactly rows * seq_len + 1 tokens
        super().__init__(torch.zeros(x.shape[0] * seq_len + 1, dtype=torch.int32), seq_len, batch_size, **sharding)
        self.tokens = None  # not used: make_batch reads the rows

    def make_batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.x[idx], self.y[idx], self.doc[idx]


class SFTEval:
    """Held-out conversations, packed once: fixed evaluation batches ``(x, y, document_ids)``."""

    def __init__(self, x: Tensor, y: Tensor, doc: Tensor) -> None:
        self.x, self.y, self.doc = x, y, doc

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, max_batches: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for b in range(min(max_batches, cdiv(len(self), batch_size))):
            s = slice(b * batch_size, (b + 1) * batch_size)
            yield self.x[s], self.y[s], self.doc[s]


def build_sft_datasets(cfg, tokenizer, rank: int = 0, world_size: int = 1):
    """``(PackedSFTDataset, SFTEval, Corpus)`` for ``TrainConfig`` ``cfg`` (``task="sft"``)."""
    train, held, corpus = load_sft_conversations(cfg.data, cfg.val_fraction)
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)  # packing mixes kinds and sources; fixed by the seed
    examples = [encode_example(train[i], tokenizer) for i in order]
    too_long = sum(len(e[0]) > cfg.seq_len for e in examples)
    where = corpus.source.removeprefix("files:")
    if too_long == len(examples):
        raise DataError(f"{where}: every conversation is longer than seq_len={cfg.seq_len} tokens; raise --seq-len")
    examples = [e for e in examples if len(e[0]) <= cfg.seq_len]  # dropped, not cut: counted below
    x, y, doc = pack_examples(examples, cfg.seq_len, tokenizer.pad_id)
    fp = hashlib.sha256(f"{corpus.sha256}:{tokenizer.describe().get('sha256', 'byte')}:{cfg.seq_len}".encode())
    try:
        ds = PackedSFTDataset(
            x, y, doc, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size, fingerprint=fp.hexdigest()[:16]
        )
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    held_ex = [e for e in (encode_example(m, tokenizer) for m in held) if len(e[0]) <= cfg.seq_len]
    ev = SFTEval(*pack_examples(held_ex, cfg.seq_len, tokenizer.pad_id)) if held_ex else None
    corpus.sft = {
        "conversations": len(train),
        "heldout": len(held),
        "dropped_too_long": too_long,
        "rows": int(x.shape[0]),
        "trained_token_share": round(packing_efficiency(y), 4),
    }
    return ds, ev, corpus


# --------------------------------------------------------------------------------------------
# Where a fine-tuning run starts: --init RUN_OR_ARTEFACT
# --------------------------------------------------------------------------------------------
def load_init(spec: str):
    """``(ModelConfig, tokenizer, state_dict)`` of the model to start from: ``reference`` (the shipped
    model), an inference artefact folder (``config.json`` + ``model.safetensors``) or a run folder
    (its latest good checkpoint)."""
    if spec == "reference":
        spec = str(REFERENCE_DIR)
    p = Path(spec)
    if not p.exists():
        raise DataError(f"--init {spec}: not found; pass 'reference', an inference artefact folder or a run folder")
    try:
        if (p / CONFIG_FILE).is_file() and (p / "model.safetensors").is_file() and not (p / "checkpoints").is_dir():
            model, tok, _ = load_inference(p)
        else:
            model, tok, _, _ = load_training_checkpoint(p)
    except (ExportError, FileNotFoundError) as e:
        raise DataError(f"--init {spec}: {' '.join(str(e).split())}") from None
    return model.config, tok, {k: v.detach().clone() for k, v in model.state_dict().items()}


def resolve_start(cfg, model_cfg, tokenizer=None):
    """``(model_cfg, tokenizer, init_state_or_None)`` for a Trainer: without ``cfg.init`` the given
    config and tokenizer (or ``cfg.tokenizer``, ``byte`` by default); with it, the init model's config,
    tokenizer and weights. A ``cfg.tokenizer`` other than the init model's is refused."""
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer != "byte" or not cfg.init else None
    if not cfg.init:
        return model_cfg, tokenizer, None
    init_cfg, init_tok, state = load_init(cfg.init)
    if tokenizer is not None and not same_tokenizer(tokenizer.describe(), init_tok.describe()):
        raise ConfigError(
            f"TrainConfig.tokenizer: {tokenizer_name(tokenizer.describe())} is not the tokenizer "
            f"of --init {cfg.init} ({tokenizer_name(init_tok.describe())}); drop --tokenizer to use "
            "the model's own"
        )
    return init_cfg, init_tok, state


# --------------------------------------------------------------------------------------------
# The fine-tuned model answering instructions it did not see
# --------------------------------------------------------------------------------------------
def chat_reply(
    model,
    tokenizer,
    messages: Sequence[dict],
    max_new_tokens: int = 160,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> str:
    """The assistant's next turn: the template with the generation prompt, ``generate()``, cut at
    ``<|im_end|>`` (or ``<eos>``). At most as many new tokens as the context has room for."""
    ids, _ = encode_chat(validate_messages(list(messages)), tokenizer, add_generation_prompt=True)
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - len(ids) + 1)  # what the context has room for
    if max_new_tokens < 1:
        raise ValueError(
            f"messages: {len(ids)} tokens fill the model's max_seq_len={model.config.max_seq_len}; "
            "shorten the conversation"
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        new = generate(
            model,
            torch.tensor([ids]),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            generator=g,
        )[0].tolist()
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    return tokenizer.decode(new).split(END_OF_TURN)[0]


def chat_demo(model, tokenizer, n: int = 4, **sampling) -> str:
    """Held-out stdlib instructions (functions SFT never saw), the model's answers and the reference
    answers, with the sampling settings in the first line: the stored demo text. ``sampling``:
    ``chat_reply``'s ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``."""
    call = inspect.signature(chat_reply).bind(model, tokenizer, [], **sampling)
    call.apply_defaults()
    a = call.arguments
    held = stdlib_instruction_pairs().heldout
    picks = [r for r in held if r["kind"] == "doc2code"][: (n + 1) // 2] + [r for r in held if r["kind"] == "code2doc"][
        : n // 2
    ]
    lines = [
        f"sampling: temperature={a['temperature']} top_k={a['top_k']} top_p={a['top_p']} "
        f"max_new_tokens={a['max_new_tokens']} seed={a['seed']} (temperature 0 = greedy); "
        f"{len(held)} held-out conversations, none trained on",
        "",
    ]
    for r in picks:
        user, want = r["messages"][0]["content"], r["messages"][1]["content"]
        got = chat_reply(model, tokenizer, r["messages"][:1], **sampling)
        lines += [
            f"### held-out {r['kind']} ({r['source']})",
            "[user]",
            user,
            "[assistant: the model]",
            got,
            "[reference answer]",
            want,
            "",
        ]
    return "\n".join(lines)
