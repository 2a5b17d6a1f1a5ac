"""Speculative decoding: a cheap proposer guesses k tokens, the model checks them in one forward.

One verify step feeds the model the last accepted token plus the k proposed ones (k + 1 tokens in
one forward, cache on). Position i's logits say what the model itself would have produced after
the first i proposals, so:

- greedy (``temperature == 0``): accept proposals while they equal the model's argmax; at the
  first mismatch take the model's own token instead. If all k match, the (k + 1)-th logits give
  one more token for free. The output is the model's greedy output, token for token; only the
  number of forwards changes.
- sampling: accept proposal x with probability min(1, p(x) / q(x)) (p: the model's distribution
  after temperature / top-k / top-p, q: the proposer's); on the first rejection sample from the
  residual max(0, p - q) renormalised. This is the rule of Leviathan et al. 2023 / Chen et al.
  2023: every emitted token is distributed exactly as if sampled from p alone. A deterministic
  proposer (prompt lookup) has q = one-hot, so the rule becomes "accept x with probability p(x),
  else sample from p with x removed".

Two proposers:
- ``NgramProposer`` (prompt lookup, as vLLM's ``ngram`` method): find the most recent earlier
  occurrence of the last n tokens in the sequence and propose the k tokens that followed it. No
  second model; pays off on text that repeats itself (code, quoting the prompt).
- ``DraftModelProposer``: a smaller model with the same tokenizer runs k cheap decode steps.

Rejected proposals leave K/V in the caches; ``crop`` cuts a ``DynamicCache`` back to the accepted
length, so the next step starts from exactly the state a plain decode would have.

Where it plugs in: ``generate(model, ids, n, speculative=SpecConfig(NgramProposer(), k=4))`` (batch 1,
delegates to ``speculative_generate`` below) and ``Engine(model, speculative=SpecConfig(...))``, which
verifies every running row's proposals in ONE ragged forward over the paged pool (``engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kv_cache import DynamicCache


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of every layer (drop K/V of rejected proposals)."""
    if not isinstance(cache, DynamicCache):
        raise TypeError(f"speculative decoding crops a DynamicCache; got {type(cache).__name__}")
    cache.keys = [k[:, :, :length] for k in cache.keys]
    cache.values = [v[:, :, :length] for v in cache.values]


def target_probs(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """The distribution ``generate.sample_next`` draws from, as probabilities over the vocabulary.

    Same filters, same order: temperature, then top-k, then top-p (a token is dropped when the mass
    before it already reaches top_p; the top token always stays). ``logits``: (..., vocab)."""
    z = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(z, min(top_k, z.size(-1)), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_z, order = torch.sort(z, descending=True, dim=-1)
        p_sorted = sorted_z.softmax(-1)
        drop_sorted = p_sorted.cumsum(-1) - p_sorted >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z.softmax(-1)


# --------------------------------------------------------------------------------------------
# Proposers
# --------------------------------------------------------------------------------------------
class NgramProposer:
    """Prompt lookup: propose what followed the latest earlier match of the last n tokens.

    Tries n = ``n_max`` down to ``n_min``; proposes nothing when no n-gram recurs. Its q is
    one-hot (``probs`` is None): a deterministic proposal."""

    def __init__(self, n_max: int = 3, n_min: int = 1) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min = n_max, n_min

    def reset(self, prompt: list[int]) -> None:
        pass

    def propose(self, tokens: list[int], k: int, generator=None) -> tuple[list[int], Tensor | None]:
        L = len(tokens)
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            tail = tokens[L - n :]
            for start in range(L - n - 1, -1, -1):  # most recent earlier occurrence first
                if tokens[start : start + n] == tail:
                    follow = tokens[start + n : start + n + k]
                    if follow:
                        return follow, None
        return [], None

    def accepted(self, n_kept: int, total_len: int) -> None:
        pass

    def fork(self) -> NgramProposer:
        """The proposer for one more sequence (the engine keeps one per request): stateless, so itself."""
        return self


class DraftModelProposer:
    """A small model with the same tokenizer proposes k tokens, one cheap decode step each.

    Keeps its own ``DynamicCache`` in step with the accepted sequence: after each verify step it
    is cropped to the accepted length and re-fed the tokens it has not seen."""

    def __init__(self, draft, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> None:
        self.draft = draft.eval()
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.cache = DynamicCache()
        self.device = next(draft.parameters()).device

    def reset(self, prompt: list[int]) -> None:
        self.cache = DynamicCache()

    @torch.no_grad()
    def propose(self, tokens: list[int], k: int, generator=None) -> tuple[list[int], Tensor | None]:
        seen = self.cache.get_seq_length()
        feed = torch.tensor([tokens[seen:]], dtype=torch.long, device=self.device)
        out, probs = [], []
        for _ in range(k):
            logits = self.draft(feed, past_key_values=self.cache, use_cache=True).logits[0, -1]
            if self.temperature <= 0:
                tok = int(logits.argmax())
            else:
                q = target_probs(logits, self.temperature, self.top_k, self.top_p)
                tok = int(torch.multinomial(q, 1, generator=generator))
                probs.append(q)
            out.append(tok)
            feed = torch.tensor([[tok]], dtype=torch.long, device=self.device)
        # the draft has cached K/V for tokens + out[:-1]; the last proposal is fed next time if kept
        return out, (torch.stack(probs) if probs else None)

    def accepted(self, n_kept: int, total_len: int) -> None:
        """``total_len`` tokens are now final; the draft's cache keeps at most that many."""
        crop(self.cache, min(self.cache.get_seq_length(), total_len))

    def fork(self) -> DraftModelProposer:
        """A proposer for one more sequence: the same draft weights, its own cache. Greedy drafting
        (q one-hot): the engine verifies every proposal as a deterministic one (``Engine`` docstring)."""
        return DraftModelProposer(self.draft)


@dataclass
class SpecConfig:
    """Speculative decoding settings for ``generate(..., speculative=)`` and ``Engine(..., speculative=)``.

    ``proposer``: ``NgramProposer()`` (prompt lookup, the default) or ``DraftModelProposer(draft)``;
    ``k``: tokens proposed per verify step. ``stats``: after a ``generate`` call, that call's
    ``SpecStats`` (tokens per verify step, acceptance rate)."""

    proposer: NgramProposer | DraftModelProposer = field(default_factory=NgramProposer)
    k: int = 4
    stats: SpecStats | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"SpecConfig.k (tokens proposed per verify step) must be an integer >= 1, got {self.k!r}")
        if not callable(getattr(self.proposer, "propose", None)):
            raise TypeError(
                f"SpecConfig.proposer must have a propose(tokens, k) method (NgramProposer, DraftModelProposer); "
                f"got {type(self.proposer).__name__}"
            )


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
def verify_greedy(logits: Tensor, proposal: list[int]) -> list[int]:
    """Tokens to emit, given the model's logits (k + 1, vocab) over [last token] + proposal."""
    best = logits.argmax(-1).tolist()  # one host read per verify step
    out = []
    for i, tok in enumerate(proposal):
        if best[i] != tok:
            break
        out.append(tok)
    out.append(best[len(out)])  # the model's own token at the first mismatch, or the bonus token
    return out


def verify_sampled(p: Tensor, proposal: list[int], q: Tensor | None, generator=None) -> list[int]:
    """The accept / reject rule. ``p``: (k + 1, vocab) model probabilities over [last] + proposal;
    ``q``: (k, vocab) proposer probabilities, or None for a deterministic (one-hot) proposal."""
    out = []
    for i, tok in enumerate(proposal):
        p_tok = float(p[i, tok])
        q_tok = 1.0 if q is None else float(q[i, tok])
        u = float(torch.rand((), generator=generator))
        if u < min(1.0, p_tok / q_tok if q_tok > 0 else 1.0):
            out.append(tok)
            continue
        if q is None:
            residual = p[i].clone()
            residual[tok] = 0.0
        else:
            residual = (p[i] - q[i]).clamp_min(0.0)
        total = float(residual.sum())
        nxt = int(torch.multinomial(residual / total, 1, generator=generator)) if total > 0 else int(p[i].argmax())
        out.append(nxt)
        return out
    out.append(int(torch.multinomial(p[len(proposal)], 1, generator=generator)))  # all accepted: bonus token
    return out


@dataclass
class SpecStats:
    verify_steps: int = 0
    proposed: int = 0
    accepted: int = 0
    emitted: int = 0
    per_step: list[int] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / max(1, self.verify_steps)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.proposed)


@torch.no_grad()
def speculative_generate(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    proposer=None,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    on_token=None,
) -> tuple[Tensor, SpecStats]:
    """Generate up to ``max_new_tokens`` after one prompt (``input_ids``: (1, T)).

    Returns (new tokens as a (1, n) tensor, ``SpecStats``). Greedy output equals
    ``generate(model, input_ids, max_new_tokens, eos_id=eos_id)``; sampled output has the same
    distribution as ``generate`` with the same temperature / top-k / top-p (not the same draws).
    ``proposer``: ``NgramProposer()`` (default) or ``DraftModelProposer(draft)``. ``on_token(ids)``
    is called with each new token as a (1,) tensor, as ``generate`` calls it.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate takes one prompt of shape (1, T); got {tuple(input_ids.shape)}")
    if k < 1:
        raise ValueError(f"k (tokens proposed per step) must be >= 1, got {k}")
    T = input_ids.shape[1]
    # the last new token is never fed back, so T + max_new_tokens - 1 positions (generate's rule)
    if T + max_new_tokens - 1 > model.config.max_seq_len:
        raise ValueError(
            f"prompt of {T} tokens + max_new_tokens={max_new_tokens} passes the model's "
            f"max_seq_len={model.config.max_seq_len}; shorten the prompt or ask for fewer tokens"
        )
    model.eval()
    proposer = proposer if proposer is not None else NgramProposer()
    device = input_ids.device
    tokens = input_ids[0].tolist()
    proposer.reset(tokens)
    cache = DynamicCache()
    stats = SpecStats()
    # prefill all but the last prompt token: each verify step starts by feeding the last accepted token
    if T > 1:
        model(input_ids[:, :-1], past_key_values=cache, use_cache=True)
    new: list[int] = []
    while len(new) < max_new_tokens:
        room = max_new_tokens - len(new)
        proposal, q = proposer.propose(tokens, min(k, room - 1), generator) if room > 1 else ([], None)
        feed = torch.tensor([tokens[-1:] + proposal], dtype=torch.long, device=device)
        logits = model(feed, past_key_values=cache, use_cache=True).logits[0]  # (1 + len(proposal), vocab)
        if temperature <= 0:
            emit = verify_greedy(logits, proposal)
        else:
            emit = verify_sampled(target_probs(logits, temperature, top_k, top_p), proposal, q, generator)
        if eos_id is not None and eos_id in emit:
            emit = emit[: emit.index(eos_id) + 1]
        emit = emit[:room]
        stats.verify_steps += 1
        stats.proposed += len(proposal)
        stats.accepted += _n_accepted(emit, proposal)
        stats.emitted += len(emit)
        stats.per_step.append(len(emit))
        tokens += emit
        new += emit
        if on_token is not None:
            for tok in emit:
                on_token(torch.tensor([tok], dtype=torch.long, device=device))
        # the cache holds K/V for tokens[:-len(emit)] + proposal; keep only what is final, minus the last token
        crop(cache, len(tokens) - 1)
        proposer.accepted(len(emit), len(tokens) - 1)
        if eos_id is not None and emit[-1] == eos_id:
            break
    return torch.tensor([new], dtype=torch.long, device=device), stats


def generate_speculative(model, input_ids: Tensor, max_new_tokens: int, spec: SpecConfig, **kw) -> Tensor:
    """``generate(..., speculative=spec)``: one unpadded prompt, a plain cache. Fills ``spec.stats``."""
    mask = kw.pop("attention_mask", None)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or (mask is not None and not bool(mask.all())):
        raise ValueError(
            "generate(speculative=...) takes one unpadded prompt of shape (1, T); "
            f"got {tuple(input_ids.shape)}{' with padding' if mask is not None else ''}: use the Engine for many"
        )
    if kw.pop("compile", False) or kw.pop("cache", None) is not None or not kw.pop("use_cache", True):
        raise ValueError("generate(speculative=...) keeps its own DynamicCache: leave compile, cache and use_cache")
    for unused in ("pad_id", "drop_finished"):  # one row that stops at EOS: nothing to pad or drop
        kw.pop(unused, None)
    out, spec.stats = speculative_generate(model, input_ids, max_new_tokens, proposer=spec.proposer, k=spec.k, **kw)
    return out


def _n_accepted(emit: list[int], proposal: list[int]) -> int:
    """How many leading proposals were kept. emit = the kept proposals + one token of the model's,
    which never equals the rejected proposal (greedy: it is the argmax that differed; sampling: the
    residual max(0, p - q) is zero wherever acceptance was certain)."""
    n = 0
    for a, b in zip(emit, proposal, strict=False):
        if a != b:
            break
        n += 1
    return n
