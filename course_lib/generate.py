"""Text generation with the KV cache: prefill once, then decode one token at a time.

``generate(model, input_ids, ...)`` is greedy when ``temperature == 0`` and samples otherwise
(temperature, top-k, top-p). Prompts of different lengths go in as one left-padded batch with an
``attention_mask``; position ids are derived from the mask inside the model, and a sequence that
emits ``eos_id`` is finished: it only receives padding afterwards.

``python -m course_lib.generate --run runs/default --prompt "def "`` loads the latest training
checkpoint of a run and prints a sample.
"""

from __future__ import annotations

import codecs
import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .cli import EXIT_INPUT, build_generate_parser, check_generate_args, print_error
from .config import ConfigError
from .export import load_model_from_run
from .fused_decode import FusedDecodeCache
from .kv_cache import BlockPool, Cache, DynamicCache, PagedKVCache, QuantizedKVCache, StaticCache, TensorPositionCache
from .model import DIYModel
from .speculative import SpecConfig, generate_speculative
from .tokenizer import token_bytes
from .util import cdiv


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token from ``logits`` of shape (batch, vocab). Returns (batch,) int64."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass *before* it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    probs = logits.softmax(-1)
    if generator is not None and generator.device.type != probs.device.type:
        # a CPU generator (the CLI's, the engine's per-request one) with CUDA logits: multinomial
        # refuses a generator of another device; draw on the CPU (the same numbers as a CPU run)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Batch token lists by padding on the left; returns (input_ids, attention_mask)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, T - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, T - len(s) :] = 1
    return ids.to(device), mask.to(device)


CACHE_KINDS = ("dynamic", "static", "int8", "paged", "fused")


def make_cache(kind: str, model, batch_size: int = 1, max_len: int | None = None, block_size: int = 16, pool=None):
    """A fresh KV cache by name: ``dynamic`` | ``static`` | ``int8`` | ``paged`` | ``fused``.

    ``static`` preallocates ``max_len`` positions (default: the model's ``max_seq_len``);
    ``paged`` takes blocks from ``pool`` (or a new pool sized for ``batch_size x max_len``).
    ``fused`` is a static cache that runs the decode steps itself with stacked weights
    (``fused_decode.py``: the same logits, fewer kernels; unpadded prompts; a DIYModel, float or
    int8 / int4 weight-only quantized).
    """
    if kind == "dynamic":
        return DynamicCache()
    if kind == "static":
        return StaticCache.for_model(model, batch_size, max_len)
    if kind == "int8":
        return QuantizedKVCache()
    if kind == "fused":
        return FusedDecodeCache.for_model(model, batch_size, max_len)
    if kind == "paged":
        if pool is None:
            n = cdiv(max_len or model.config.max_seq_len, block_size) * batch_size
            pool = BlockPool.for_model(model, num_blocks=n, block_size=block_size)
        return PagedKVCache(pool, batch_size)
    raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")


def prefill(model, input_ids: Tensor, attention_mask: Tensor | None, cache) -> Tensor:
    """Phase 1: run the whole prompt once, filling ``cache``; returns the last position's logits."""
    return model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1, :]


def decode_step(model, next_ids: Tensor, attention_mask: Tensor | None, cache) -> Tensor:
    """Phase 2: one new token per row; K/V of everything before comes from ``cache`` (a
    ``FusedDecodeCache`` runs the step itself: unpadded rows, so no mask)."""
    if isinstance(cache, FusedDecodeCache):
        return cache.decode(model, next_ids)
    return model(next_ids[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[
        :, -1, :
    ]


# --------------------------------------------------------------------------------------------
# Compiled fast path (gpt-fast's recipe): static cache + torch.compile of the decode step
# --------------------------------------------------------------------------------------------
def compile_available() -> tuple[bool, str]:
    """``torch.compile`` on CPU generates C++ and needs a compiler; on CUDA it needs Triton."""
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return False, "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH; none found"
    return _compiler_works(cxx)


@functools.cache
def _compiler_works(cxx: str) -> tuple[bool, str]:
    """A compiler on PATH can still be unusable (a half-installed toolchain: "cannot execute
    cc1plus"); compile an empty program once per process to find out before torch.compile does."""
    try:
        r = subprocess.run(
            [cxx, "-x", "c++", "-", "-o", os.devnull],
            input="int main() { return 0; }\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"the C++ compiler {cxx} cannot be run ({type(e).__name__})"
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["no output"])[0]
        return False, f"the C++ compiler {cxx} does not work ({msg})"
    return True, "ok"


def _decode_logits(model, next_ids: Tensor, cache: TensorPositionCache) -> Tensor:
    """The step that gets compiled: one token per row, fixed shapes, positions from the cache."""
    return model(next_ids[:, None], past_key_values=cache, use_cache=True).logits[:, -1, :]


_COMPILED = {}


def compiled_decode_step(mode: str | None = None):
    """``torch.compile(_decode_logits, fullgraph=True)``, made once per process (and mode).
    ``fullgraph=True`` turns any graph break into an error rather than a silent slow path."""
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_decode_logits, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[mode]


def compiled_cache_len(needed: int, max_seq_len: int) -> int:
    """Cache length for ``needed`` tokens: the next power of two (at least 64), capped at the
    model's ``max_seq_len``. The compiled step is specialised to this length, so generate calls of
    similar lengths share one graph instead of compiling once per exact length."""
    if needed > max_seq_len:
        raise ValueError(
            f"{needed} tokens pass the model's max_seq_len={max_seq_len}; "
            "ask for fewer new tokens or use a model config with a larger max_seq_len"
        )
    return min(max(64, 1 << (needed - 1).bit_length()), max_seq_len)


def make_compiled_cache(model, batch_size: int, needed: int) -> TensorPositionCache:
    """A ``TensorPositionCache`` with room for ``needed`` tokens (length from ``compiled_cache_len``)."""
    return TensorPositionCache.for_model(model, batch_size, compiled_cache_len(needed, model.config.max_seq_len))


@torch.no_grad()
def warm_up_compiled(model, batch_size: int = 1, max_len: int | None = None) -> float:
    """Compile (or find compiled) the decode step for this model and batch size; returns the
    seconds the first two calls took (the compile cost the first ``generate(compile=True)`` pays)."""
    cache = make_compiled_cache(model, batch_size, max_len or model.config.max_seq_len)
    ids = torch.zeros(batch_size, 1, dtype=torch.long, device=next(model.parameters()).device)
    step = compiled_decode_step()
    t0 = time.perf_counter()
    for _ in range(2):
        step(model, ids[:, 0], cache)
        cache.advance(1)
    return time.perf_counter() - t0


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    cache=None,
    generator: torch.Generator | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    drop_finished: bool = True,
    compile: bool = False,
    speculative: SpecConfig | None = None,
) -> Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids``; returns only the new tokens.

    ``use_cache=False`` recomputes the whole sequence every step (the slow baseline the KV
    cache is compared with). ``cache`` lets you pass a preallocated cache object (or a name
    from ``CACHE_KINDS``). ``on_token(next_ids)`` is called with every new column of tokens
    (for streaming). Rows that emitted ``eos_id`` receive ``pad_id`` afterwards; with
    ``drop_finished`` they are also removed from the running batch (and from the cache, via
    ``cache.reorder``), so finished sequences stop costing compute.

    Host syncs: the sequence length is checked once, before the loop; inside it the only sync is
    the EOS check (see there): without ``eos_id`` the loop never waits on the device.

    ``compile=True``: a ``TensorPositionCache`` (fixed shapes), eager prefill, each decode step by
    ``torch.compile``d code (compiled once per process and batch size, see ``warm_up_compiled``);
    unpadded prompts only, finished rows stay; on CPU it needs a C++ compiler (``compile_available()``).

    ``speculative=SpecConfig(proposer, k)``: speculative decoding (``speculative.py``, lesson 4.2.6) of
    one unpadded prompt, greedy output identical; tokens per verify step in ``speculative.stats``.
    """
    if speculative is not None:  # its own loop: propose k, verify k + 1 in one forward, crop the cache
        return generate_speculative(
            model, input_ids, max_new_tokens, speculative, attention_mask=attention_mask, temperature=temperature,
            top_k=top_k, top_p=top_p, eos_id=eos_id, pad_id=pad_id, use_cache=use_cache, cache=cache,
            generator=generator, on_token=on_token, drop_finished=drop_finished, compile=compile,
        )  # fmt: skip
    model.eval()
    B, device = input_ids.shape[0], input_ids.device
    if compile:
        cache = _compiled_cache_for(model, input_ids, max_new_tokens, attention_mask, use_cache, cache)
        attention_mask, drop_finished = None, False
    else:
        attention_mask = _eager_mask(model, input_ids, attention_mask, max_new_tokens, use_cache, eos_id, drop_finished)
    past = _past(cache, model, B, input_ids.shape[1] + max_new_tokens, use_cache)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # original row index of each running row
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # per running row
    seq, mask = input_ids, attention_mask
    steps = 0
    for step in range(max_new_tokens):
        logits = _next_logits(model, step, seq, mask, past, compile)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        out[active, step] = nxt
        steps = step + 1
        if on_token is not None:
            on_token(_full_column(nxt, active, B, pad_id))
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if mask is not None:  # the EOS token itself is real; pads after it are not
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
        if eos_id is None:
            continue
        finished = finished | (nxt == eos_id)
        # The one host sync per token, kept on purpose: to stop when every row has emitted EOS
        # (and to shrink the batch when some have), Python must read the flags from the device.
        n_done = int(finished.sum())
        if n_done == finished.numel():
            break
        if drop_finished and n_done:
            seq, active, finished, mask = _drop_rows(finished, past, seq, active, mask)
    return out[:, :steps]


def _full_column(nxt: Tensor, active: Tensor, batch_size: int, pad_id: int) -> Tensor:
    """This step's tokens for every original row (``pad_id`` for rows already dropped)."""
    col = torch.full((batch_size,), pad_id, dtype=torch.long, device=nxt.device)
    col[active] = nxt
    return col


def _past(cache, model, batch_size: int, max_len: int, use_cache: bool):
    """The cache ``generate`` decodes into: the one given (an object or a ``CACHE_KINDS`` name), a
    ``DynamicCache`` by default, ``None`` without a cache."""
    if isinstance(cache, str):
        cache = make_cache(cache, model, batch_size, max_len=max_len)
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(
            f"cache must be a course_lib.kv_cache.Cache or one of {CACHE_KINDS}, got {type(cache).__name__}"
        )
    return (cache if cache is not None else DynamicCache()) if use_cache else None


def _drop_rows(finished: Tensor, past, seq: Tensor, active: Tensor, mask: Tensor | None):
    """The running batch without its finished rows (the cache too): ``seq, active, finished, mask``.
    nonzero() syncs, but only on the steps where a row has just finished (finished rows leave the
    batch, so none is finished on the next step)."""
    keep = (~finished).nonzero().squeeze(-1)
    if past is not None:
        past.reorder(keep)
    return seq[keep], active[keep], finished[keep], (mask[keep] if mask is not None else None)


def _compiled_cache_for(model, input_ids: Tensor, max_new_tokens: int, attention_mask, use_cache: bool, cache):
    """``generate(compile=True)``'s checks, then the static cache it decodes into."""
    ok, why = compile_available()
    if not ok:
        raise RuntimeError(f"generate(compile=True): {why}; use compile=False")
    if not use_cache or cache is not None:
        raise ValueError("generate(compile=True) makes its own static cache: leave use_cache=True and cache=None")
    if attention_mask is not None and not bool(attention_mask.all()):  # one host read, before the loop
        raise ValueError(
            "generate(compile=True) takes unpadded prompts of one length; for a left-padded batch use compile=False"
        )
    return make_compiled_cache(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)


def _eager_mask(
    model, input_ids: Tensor, attention_mask, max_new_tokens: int, use_cache: bool, eos_id, drop_finished: bool
) -> Tensor | None:
    """The attention mask the eager loop runs with (checked against ``max_seq_len``), or ``None``."""
    unpadded = attention_mask is None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_room(model.config.max_seq_len, input_ids, attention_mask, max_new_tokens)
    # An unpadded batch whose rows all stay in it (no EOS, or finished rows dropped) needs no mask in
    # DIYModel: positions are then the cache length plus 0..T-1, and a decode step sees every key, so
    # the model builds no mask and derives no positions on each step (the per-step work lesson 4.0.6
    # profiles). Only when the caller gave no mask: reading a given one would be a host sync.
    # Other models get the mask.
    if isinstance(model, DIYModel) and unpadded and use_cache and (eos_id is None or drop_finished):
        return None
    return attention_mask


def _next_logits(model, step: int, seq: Tensor, mask: Tensor | None, past, compile: bool) -> Tensor:
    """The last position's logits for step ``step``: recompute (no cache), compiled or eager decode."""
    if past is None:
        return model(seq, attention_mask=mask).logits[:, -1, :]
    if compile:
        if step == 0:
            logits = prefill(model, seq, None, past)
            past.advance(seq.shape[1])
            return logits
        # a fresh (B,) tensor with stride (1,): the compiled step is specialised to its
        # inputs' strides, and a column of ``seq`` has stride seq_len, new every step
        # (even at B=1, where .contiguous() keeps it) -> one recompile per step
        last = seq[:, -1].clone(memory_format=torch.contiguous_format)
        logits = compiled_decode_step()(model, last, past).clone()
        past.advance(1)
        return logits
    if step == 0:
        if isinstance(past, FusedDecodeCache) and mask is not None and not bool(mask.all()):
            raise ValueError("cache='fused' decodes unpadded prompts only (every row at the same position)")
        return prefill(model, seq, mask, past)
    return decode_step(model, seq[:, -1], mask, past)


def check_room(max_seq_len: int, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int) -> None:
    """Raise before generating if the longest prompt plus the new tokens would pass ``max_seq_len``.

    Positions come from the mask (left padding does not count), so the padded width is only an
    upper bound; the exact length costs one device read, made once per call and only when the
    bound is exceeded.
    """
    if input_ids.shape[1] + max_new_tokens - 1 <= max_seq_len:
        return
    longest = int(attention_mask.sum(-1).max())
    if longest + max_new_tokens - 1 > max_seq_len:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} passes the model's "
            f"max_seq_len={max_seq_len}; shorten the prompt or ask for fewer new tokens"
        )


def stream_generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield text pieces as soon as they are decodable (one prompt, KV cache, prefill + decode).

    Byte-level tokens can split a UTF-8 character (a Chinese character is 3 tokens): an
    incremental decoder holds incomplete bytes back until the character is complete.
    """
    model.eval()
    device = next(model.parameters()).device
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    cache = DynamicCache()
    with torch.no_grad():
        logits = prefill(model, ids, None, cache)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            tok = int(nxt[0])  # a host sync per token, on purpose: streaming means showing each token now
            if tok == tokenizer.eos_id:
                break
            piece = dec.decode(token_bytes(tokenizer, tok))  # bytes or BPE: the token's UTF-8 bytes
            if piece:
                yield piece
            if i + 1 < max_new_tokens:
                logits = decode_step(model, nxt, None, cache)
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail


def generate_text(model, tokenizer, prompts: Sequence[str] | str, max_new_tokens: int = 100, **kw) -> list[str] | str:
    """Strings in, strings out (left-padded batch for several prompts)."""
    single = isinstance(prompts, str)
    plist = [prompts] if single else list(prompts)
    device = next(model.parameters()).device
    ids, mask = left_pad([tokenizer.encode(p) for p in plist], tokenizer.pad_id, device)
    new = generate(
        model, ids, max_new_tokens, attention_mask=mask, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, **kw
    )
    texts = []
    for row in new.tolist():
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(row))
    return texts[0] if single else texts


# ------------------------------------------------------------------------------------------
# python -m course_lib.generate
# ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.generate``: text from a trained run; a bad flag or run folder is one
    ``error:`` line and exit 2."""
    args = build_generate_parser().parse_args(argv)
    try:
        check_generate_args(args)
        if args.compile:
            ok, why = compile_available()
            if not ok:
                raise ConfigError(f"--compile: {why}; run without --compile")
    except ConfigError as e:
        print_error(e)
        return EXIT_INPUT
    try:
        model, tok, path = load_model_from_run(args.run)
    except Exception as e:  # noqa: BLE001 - any unusable run folder is an input error here
        print_error(e)
        return EXIT_INPUT
    g = torch.Generator().manual_seed(args.seed)
    prompts = args.prompt or ["def "]
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=g)
    if args.compile:  # the compiled step needs unpadded rows of one length: one prompt per call, batch 1
        texts = [generate_text(model, tok, p, args.max_new_tokens, compile=True, **sampling) for p in prompts]
    else:
        texts = generate_text(model, tok, prompts, args.max_new_tokens, use_cache=not args.no_cache, **sampling)
    print(f"[generate] model from {path}", file=sys.stderr)
    for prompt, text in zip(prompts, texts, strict=True):
        print(prompt + text)
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
