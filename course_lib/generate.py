"""Text generation with the KV cache: prefill once, then decode one token at a time.

``generate(model, input_ids, ...)`` is greedy when ``temperature == 0`` and samples otherwise
(temperature, top-k, top-p). Prompts of different lengths go in as one left-padded batch with an
``attention_mask``; position ids are derived from the mask inside the model, and a sequence that
emits ``eos_id`` is finished: it only receives padding afterwards.

``python -m course_lib.generate --run runs/default --prompt "def "`` loads the latest training
checkpoint of a run and prints a sample.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from .kv_cache import DynamicCache


def sample_next(logits: Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> Tensor:
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
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Batch token lists by padding on the left; returns (input_ids, attention_mask)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, T - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


CACHE_KINDS = ("dynamic", "static", "int8", "paged")


def make_cache(kind: str, model, batch_size: int = 1, max_len: Optional[int] = None, block_size: int = 16,
               pool=None):
    """A fresh KV cache by name: ``dynamic`` | ``static`` | ``int8`` | ``paged``.

    ``static`` preallocates ``max_len`` positions (default: the model's ``max_seq_len``);
    ``paged`` takes blocks from ``pool`` (or a new pool sized for ``batch_size x max_len``).
    """
    from .kv_cache import BlockPool, PagedKVCache, QuantizedKVCache, StaticCache

    if kind == "dynamic":
        return DynamicCache()
    if kind == "static":
        return StaticCache.for_model(model, batch_size, max_len)
    if kind == "int8":
        return QuantizedKVCache()
    if kind == "paged":
        if pool is None:
            n = -(-(max_len or model.config.max_seq_len) // block_size) * batch_size
            pool = BlockPool.for_model(model, num_blocks=n, block_size=block_size)
        return PagedKVCache(pool, batch_size)
    raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")


def prefill(model, input_ids: Tensor, attention_mask: Optional[Tensor], cache) -> Tensor:
    """Phase 1: run the whole prompt once, filling ``cache``; returns the last position's logits."""
    return model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1, :]


def decode_step(model, next_ids: Tensor, attention_mask: Optional[Tensor], cache) -> Tensor:
    """Phase 2: one new token per row; K/V of everything before comes from ``cache``."""
    return model(next_ids[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1, :]


@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Optional[Tensor] = None,
             temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             eos_id: Optional[int] = None, pad_id: int = 0, use_cache: bool = True, cache=None,
             generator: Optional[torch.Generator] = None,
             on_token: Optional[Callable[[Tensor], None]] = None, drop_finished: bool = True) -> Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids``; returns only the new tokens.

    ``use_cache=False`` recomputes the whole sequence every step (the slow baseline the KV
    cache is compared with). ``cache`` lets you pass a preallocated cache object (or a name
    from ``CACHE_KINDS``). ``on_token(next_ids)`` is called with every new column of tokens
    (for streaming). Rows that emitted ``eos_id`` receive ``pad_id`` afterwards; with
    ``drop_finished`` they are also removed from the running batch (and from the cache, via
    ``cache.reorder``), so finished sequences stop costing compute.
    """
    model.eval()
    B = input_ids.shape[0]
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if isinstance(cache, str):
        cache = make_cache(cache, model, B, max_len=input_ids.shape[1] + max_new_tokens)
    past = (cache if cache is not None else DynamicCache()) if use_cache else None
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)          # original row index of each running row
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # per running row
    seq, mask = input_ids, attention_mask
    steps = 0
    for step in range(max_new_tokens):
        if not use_cache:
            logits = model(seq, attention_mask=mask).logits[:, -1, :]
        elif step == 0:
            logits = prefill(model, seq, mask, past)
        else:
            logits = decode_step(model, seq[:, -1], mask, past)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        out[active, step] = nxt
        steps = step + 1
        if on_token is not None:
            col = torch.full((B,), pad_id, dtype=torch.long, device=device)
            col[active] = nxt
            on_token(col)
        new_mask_col = (~finished).long()[:, None]   # the EOS token itself is real; pads after it are not
        if eos_id is not None:
            finished = finished | (nxt == eos_id)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        mask = torch.cat([mask, new_mask_col], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
        if drop_finished and eos_id is not None and bool(finished.any()) and \
                (past is None or hasattr(past, "reorder")):
            keep = (~finished).nonzero().squeeze(-1)
            if past is not None:
                past.reorder(keep)
            seq, mask, active, finished = seq[keep], mask[keep], active[keep], finished[keep]
    return out[:, :steps]


def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int = 100, *, temperature: float = 0.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None,
                    generator: Optional[torch.Generator] = None) -> Iterator[str]:
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
            tok = int(nxt[0])
            if tok == tokenizer.eos_id:
                break
            piece = dec.decode(bytes([tok])) if tok < 256 else ""
            if piece:
                yield piece
            if i + 1 < max_new_tokens:
                logits = decode_step(model, nxt, None, cache)
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail


@torch.no_grad()
def measure_generation(model, batch_size: int, prompt_len: int, new_tokens: int, *, cache: Optional[str] = "dynamic",
                       repeats: int = 1, seed: int = 0) -> dict:
    """Time prefill and decode separately (greedy, random prompt tokens, no EOS).

    ``cache=None`` is the no-cache baseline: every decode step re-runs the whole sequence.
    Returns tokens/s for both phases; decode tokens/s counts ``batch_size`` tokens per step.
    The best of ``repeats`` runs is kept (least disturbed by other processes).
    """
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch_size, prompt_len), generator=g).to(device)
    best_p, best_d = float("inf"), float("inf")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(repeats):
        past = make_cache(cache, model, batch_size, max_len=prompt_len + new_tokens) if cache else None
        sync()
        t0 = time.perf_counter()
        if past is not None:
            logits = prefill(model, ids, None, past)
        else:
            logits = model(ids).logits[:, -1, :]
        sync()
        t1 = time.perf_counter()
        seq = ids
        for _ in range(new_tokens):
            nxt = logits.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
            logits = decode_step(model, nxt, None, past) if past is not None else model(seq).logits[:, -1, :]
        sync()
        t2 = time.perf_counter()
        best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
    return {"batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens, "cache": cache or "none",
            "prefill_s": best_p, "decode_s": best_d,
            "prefill_tok_s": batch_size * prompt_len / best_p, "decode_tok_s": batch_size * new_tokens / best_d}


def long_context_copy(model, max_seq_len: int):
    """The same weights in a model whose RoPE tables reach ``max_seq_len`` (for speed sweeps:
    the tables are derived from the config, not stored, so the weights load unchanged)."""
    from .model import DIYModel

    big = DIYModel(model.config.replace(max_seq_len=max_seq_len))
    big.load_state_dict(model.state_dict())
    return big.to(next(model.parameters()).device).eval()


def decode_speed_vs_context(model, contexts: Sequence[int], new_tokens: int = 16, repeats: int = 2,
                            batch_size: int = 1) -> List[dict]:
    """Decode tokens/s with the KV cache and without it (full recompute), per context length."""
    rows = []
    for L in contexts:
        c = measure_generation(model, batch_size, L, new_tokens, cache="dynamic", repeats=repeats)
        n = measure_generation(model, batch_size, L, new_tokens, cache=None, repeats=repeats)
        rows.append({"context": L, "cache_tok_s": c["decode_tok_s"], "no_cache_tok_s": n["decode_tok_s"],
                     "speedup": c["decode_tok_s"] / n["decode_tok_s"]})
    return rows


def throughput_vs_batch(model, batch_sizes: Sequence[int], prompt_len: int = 32, new_tokens: int = 32,
                        repeats: int = 2) -> List[dict]:
    """Decode throughput (generated tokens/s over the whole batch) per batch size, KV cache on."""
    rows = []
    for b in batch_sizes:
        r = measure_generation(model, b, prompt_len, new_tokens, cache="dynamic", repeats=repeats)
        rows.append({"batch_size": b, "decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"],
                     "ms_per_step": 1000 * r["decode_s"] / new_tokens})
    base = rows[0]["decode_tok_s"]
    for r in rows:
        r["vs_batch1"] = r["decode_tok_s"] / base
    return rows


def generate_text(model, tokenizer, prompts: Sequence[str] | str, max_new_tokens: int = 100, **kw) -> List[str] | str:
    """Strings in, strings out (left-padded batch for several prompts)."""
    single = isinstance(prompts, str)
    plist = [prompts] if single else list(prompts)
    device = next(model.parameters()).device
    ids, mask = left_pad([tokenizer.encode(p) for p in plist], tokenizer.pad_id, device)
    new = generate(model, ids, max_new_tokens, attention_mask=mask, eos_id=tokenizer.eos_id,
                   pad_id=tokenizer.pad_id, **kw)
    texts = []
    for row in new.tolist():
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(row))
    return texts[0] if single else texts


def load_model_from_run(run_dir: str | Path, map_location="cpu"):
    """Model + tokenizer from the latest good training checkpoint of a run folder."""
    from .checkpoint import CheckpointManager
    from .config import ModelConfig
    from .data import tokenizer_from_description
    from .model import DIYModel

    found = CheckpointManager(run_dir, verbose=False).load_latest(map_location=map_location)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}; "
                                "train first: python -m course_lib.train --out-dir " + str(run_dir))
    state, path = found
    cfg = ModelConfig.from_dict(state["config"]["model"])
    model = DIYModel(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), tokenizer_from_description(state.get("tokenizer", {"type": "byte"})), path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.generate",
                                description="Generate text from a trained run (latest checkpoint).")
    p.add_argument("--run", default="runs/default", help="run folder written by course_lib.train (default: runs/default)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat the flag for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow baseline)")
    args = p.parse_args(argv)
    try:
        model, tok, path = load_model_from_run(args.run)
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    prompts = args.prompt or ["def "]
    texts = generate_text(model, tok, prompts, args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, generator=g, use_cache=not args.no_cache)
    print(f"[generate] model from {path}", file=sys.stderr)
    for prompt, text in zip(prompts, texts, strict=True):
        print(prompt + text)
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
