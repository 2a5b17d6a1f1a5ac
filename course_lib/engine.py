"""Continuous batching: many requests share one running batch over a paged KV cache.

Static batching takes a fixed batch of prompts and runs it until the *longest* answer is done:
rows that finished early keep computing padding, and a request that arrives meanwhile waits for
the whole batch. Continuous batching (Orca, OSDI'22; vLLM; TGI) schedules at every decode step:

1. **admit**: waiting requests join while there is room (``max_batch`` rows, a per-step token
   budget ``max_step_tokens``, free KV blocks); each is prefilled alone and samples its first token;
2. **decode**: ONE forward pass feeds every running sequence its newest token (a left-padded
   view over per-sequence KV blocks, with the attention mask and per-row positions the model
   already supports, lesson 4.2.4) and samples one token per row;
3. **evict**: sequences that emitted EOS or reached ``max_tokens`` leave the batch at once and
   their blocks go back to the ``BlockPool`` (lesson 4.2.3).

When a running sequence needs a new block and the pool is empty, the newest running sequence is
*preempted* (vLLM's recompute policy): its blocks are freed, it goes back to the front of the
queue, and on re-admission its prompt plus the tokens generated so far are prefilled again. A
request that could never fit (longer than the model's context or the whole pool) is refused when
it is submitted, with the reason.

``Engine(model, eos_id=...)``: ``submit(prompt_ids, max_tokens, ...)`` returns a ``Request``;
``step()`` runs one scheduler iteration; ``run_until_done()`` loops. The engine is single-threaded:
a server runs it in one background thread and talks to it through ``submit`` (thread-safe) and the
per-request ``on_token`` / ``on_finish`` callbacks.
"""

from __future__ import annotations

import itertools
import queue
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .generate import sample_next
from .kv_cache import BlockPool, Cache


# --------------------------------------------------------------------------------------------
# The cache view: a batch of sequences of different lengths over per-sequence paged blocks
# --------------------------------------------------------------------------------------------
@dataclass
class SeqBlocks:
    """The KV blocks of one sequence: a block table and how many positions each layer holds."""

    n_layers: int
    table: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [0] * self.n_layers

    @property
    def length(self) -> int:
        return self.lengths[-1]  # the last layer is written last: positions complete in every layer


class RaggedPagedCache(Cache):
    """A left-padded batch view over sequences that each own their blocks in one ``BlockPool``.

    Row ``b`` holds ``n_b`` cached positions; the view is ``L = max(n_b)`` wide and row ``b``
    occupies its last ``n_b`` slots, so the model sees the same layout as a left-padded batch
    (lesson 4.2.4): ``attention_mask(T)`` marks the padding, and the model derives each row's
    position ids from that mask. Rows can have different lengths because each row's new tokens are
    written into *its own* blocks at *its own* next position. Blocks must already be reserved
    (``Engine`` does it before the forward, so a full pool never fails half-way through layers).
    """

    def __init__(self, pool: BlockPool, seqs: Sequence[SeqBlocks]) -> None:
        self.pool, self.seqs = pool, list(seqs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(s.lengths[layer_idx] for s in self.seqs)

    def attention_mask(self, new_tokens: int) -> Tensor:
        """(B, L + new_tokens): 0 on the left padding, 1 on every real (cached or new) position."""
        L = self.get_seq_length()
        mask = torch.zeros(len(self.seqs), L + new_tokens, dtype=torch.long, device=self.pool.k[0].device)
        for b, s in enumerate(self.seqs):
            mask[b, L - s.lengths[0]:] = 1
        return mask

    def _slots(self, positions: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Block id and slot of each (row, position); ``-1`` positions (padding) read slot (0, 0)."""
        bs, dev = self.pool.block_size, self.pool.k[0].device
        blk = [[s.table[p // bs] if p >= 0 else 0 for p in row] for s, row in zip(self.seqs, positions, strict=True)]
        slot = [[p % bs if p >= 0 else 0 for p in row] for row in positions]
        return torch.tensor(blk, device=dev), torch.tensor(slot, device=dev)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        B, T = k.shape[0], k.shape[2]
        if B != len(self.seqs):
            raise ValueError(f"RaggedPagedCache has {len(self.seqs)} rows, got batch {B}")
        if B > 1 and T > 1:
            # A multi-token step for rows of different lengths would write their padding too.
            raise ValueError("RaggedPagedCache: prefill one sequence at a time (B == 1) or decode one token (T == 1)")
        starts = [s.lengths[layer_idx] for s in self.seqs]
        for s, n in zip(self.seqs, starts, strict=True):
            if n + T > len(s.table) * self.pool.block_size:
                raise RuntimeError(f"sequence needs {n + T} slots but holds {len(s.table)} blocks; reserve blocks first")
        kp, vp = self.pool.k[layer_idx], self.pool.v[layer_idx]
        # 1. write: row b's new tokens go to positions starts[b] .. starts[b] + T - 1 of its own blocks
        blk, slot = self._slots([list(range(n, n + T)) for n in starts])
        kp[blk, :, slot] = k.permute(0, 2, 1, 3)          # (B, T, H, D) into (block, :, slot)
        vp[blk, :, slot] = v.permute(0, 2, 1, 3)
        for s in self.seqs:
            s.lengths[layer_idx] += T
        # 2. gather the left-padded view: row b's position p sits at column L_new - n_b + p
        L_new = max(starts) + T
        pos = [[p - (L_new - (n + T)) for p in range(L_new)] for n in starts]   # < 0 on the padding
        blk, slot = self._slots(pos)
        pad = torch.tensor([[p < 0 for p in row] for row in pos], device=k.device)[:, None, :, None]
        # Padding reads block 0 (any real slot) and is zeroed; the mask hides it from attention anyway.
        kk = kp[blk, :, slot].permute(0, 2, 1, 3).masked_fill(pad, 0.0)
        vv = vp[blk, :, slot].permute(0, 2, 1, 3).masked_fill(pad, 0.0)
        return kk, vv

    def nbytes(self) -> int:
        return sum(len(s.table) for s in self.seqs) * self.pool.block_bytes

    def reorder(self, index: Tensor) -> None:
        """Keep only the rows in ``index`` (their blocks stay owned by their sequences)."""
        self.seqs = [self.seqs[int(i)] for i in index]


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------
class RequestRefused(ValueError):
    """The request can never be served by this engine (too long for the context or the pool)."""


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One completion request and everything the engine records about it."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    # sampling extras (the server's OpenAI fields): penalties on the logits from this request's own
    # output counts, and per emitted token its log-probability plus the ``logprobs`` most likely ones
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None          # None: record nothing
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list, repr=False)
    pending_logprob: tuple[float, list[tuple[int, float]]] | None = field(default=None, repr=False)
    on_token: Callable[[Request, int], None] | None = field(default=None, repr=False)  # from the engine thread
    on_finish: Callable[[Request], None] | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "stop" (EOS) | "length" | "abort" | "error"
    error: str | None = None
    # bookkeeping for the scheduler and for latency measurements
    blocks: SeqBlocks | None = field(default=None, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)
    preemptions: int = 0
    t_submit: float = 0.0
    t_first: float | None = None
    t_done: float | None = None
    step_submit: int = 0
    step_first: int | None = None
    step_done: int | None = None
    aborted: bool = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def abort(self) -> None:
        """Ask the engine to stop this request at its next step (e.g. the client went away)."""
        self.aborted = True


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
class Engine:
    """Scheduler + paged KV cache + one batched decode step per iteration.

    ``policy="continuous"`` admits at every step and evicts finished rows at once;
    ``policy="static"`` is the baseline: a batch is formed only when none is running, and
    finished rows keep being computed (their output ignored) until the batch's longest request
    ends, as a plain ``generate`` over a fixed batch does.
    """

    def __init__(self, model, *, eos_id: int | None = None, max_batch: int = 8, max_step_tokens: int = 512,
                 num_blocks: int | None = None, block_size: int = 16, policy: str = "continuous",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        if max_batch < 1 or max_step_tokens < 1:
            raise ValueError(f"max_batch and max_step_tokens must be >= 1, got {max_batch}, {max_step_tokens}")
        self.model = model.eval()
        self.eos_id, self.max_batch, self.max_step_tokens = eos_id, max_batch, max_step_tokens
        self.policy, self.clock = policy, clock
        self.max_len = model.config.max_seq_len
        if num_blocks is None:  # enough for every row to reach the full context
            num_blocks = max_batch * -(-self.max_len // block_size)
        self.pool = BlockPool.for_model(model, num_blocks=num_blocks, block_size=block_size)
        self.device = next(model.parameters()).device
        self.inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()   # submit() from any thread
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self.stats = {"decode_steps": 0, "decode_rows": 0, "idle_rows": 0, "prefill_tokens": 0, "preemptions": 0}
        self.history: list[tuple[int, int, int]] = []   # per decode step: (step, rows computed, idle rows)

    # ---- submitting ---------------------------------------------------------------------------
    def check(self, n_prompt: int, max_tokens: int) -> None:
        """Raise ``RequestRefused`` when a request of this size can never be served."""
        if n_prompt < 1:
            raise RequestRefused("prompt: needs at least one token")
        if max_tokens < 1:
            raise RequestRefused(f"max_tokens: must be >= 1, got {max_tokens}")
        if n_prompt + max_tokens > self.max_len:
            raise RequestRefused(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                                 f"context of {self.max_len} tokens; shorten the prompt or lower max_tokens")
        need = self.blocks_for(n_prompt + max_tokens)
        if need > self.pool.num_blocks:
            raise RequestRefused(f"needs {need} KV blocks but the pool has {self.pool.num_blocks}; "
                                 "lower max_tokens or start the engine with more blocks")

    def submit(self, prompt_ids: Sequence[int], max_tokens: int, **kw) -> Request:
        """Queue a request (thread-safe). Raises ``RequestRefused`` if it can never fit."""
        self.check(len(prompt_ids), max_tokens)
        req = Request(list(prompt_ids), int(max_tokens), **kw)
        req.generator = torch.Generator(device="cpu")
        # No seed: a fresh one from the OS (never from torch's global RNG, which the caller may rely on).
        req.generator.manual_seed(req.seed if req.seed is not None else secrets.randbits(62))
        req.t_submit = self.clock()
        self.inbox.put(req)
        return req

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or not self.inbox.empty())

    # ---- the scheduler loop ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """One iteration: take new arrivals, admit, one batched decode step, evict."""
        while not self.inbox.empty():
            req = self.inbox.get()
            req.step_submit = self.steps
            self.waiting.append(req)
        self._drop_aborted()
        self.admit()
        self.decode()
        self.evict()
        self.steps += 1

    def run_until_done(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.has_work:
                return
            self.step()
        raise RuntimeError(f"engine still busy after {max_steps} steps")

    # ---- 1. admit -------------------------------------------------------------------------------
    def blocks_for(self, n_tokens: int) -> int:
        """KV blocks needed to hold ``n_tokens`` positions (rounded up to whole blocks)."""
        return -(-n_tokens // self.pool.block_size)

    @staticmethod
    def prefill_tokens(req: Request) -> int:
        """Tokens a (re-)admission feeds through the model: the prompt, plus output if preempted."""
        return len(req.prompt_ids) + len(req.output)

    def can_admit(self, req: Request, budget_used: int) -> bool:
        """Room for one more row? A batch slot, the token budget, and blocks for its prefill + 1."""
        n = self.prefill_tokens(req)
        if len(self.running) >= self.max_batch:
            return False
        # The budget caps prefill work per step (decode latency of the others); a prompt longer
        # than the whole budget still goes in when it is the first of the step, or it would starve.
        if budget_used > 0 and budget_used + n > self.max_step_tokens:
            return False
        # + 1: the first decode step right after needs a slot for the token prefill sampled
        return self.blocks_for(n + 1) <= len(self.pool.free)

    def admit(self) -> None:
        """Move waiting requests into the batch, oldest first, while ``can_admit`` allows.

        Strict FIFO: when the head of the queue does not fit, nobody behind it jumps ahead (a big
        request would otherwise starve behind a stream of small ones).
        """
        if self.policy == "static" and self.running:
            return                                       # static: the running batch must finish first
        budget = len(self.running)                       # each running row decodes one token this step
        while self.waiting and self.can_admit(self.waiting[0], budget):
            req = self.waiting.popleft()
            budget += self.prefill_tokens(req)
            self.prefill(req)

    def prefill(self, req: Request) -> None:
        """Prefill one request alone (B = 1, no padding); a fresh request samples its first token.

        A preempted request already has output: its newest token is still pending (sampled, not
        yet fed), so it prefills prompt + all earlier output and joins the next decode step.
        """
        req.blocks = SeqBlocks(len(self.pool.k))
        ids = req.prompt_ids + req.output[:-1] if req.output else req.prompt_ids
        try:
            self._reserve(req.blocks, len(ids))
            cache = RaggedPagedCache(self.pool, [req.blocks])
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            logits = self.model(x, past_key_values=cache, use_cache=True).logits[:, -1, :]
            self.stats["prefill_tokens"] += len(ids)
            if not req.output:
                self._emit(req, self._sample(req, logits))
        except Exception as e:  # noqa: BLE001  an engine error fails this request only
            self._fail(req, e)
            return
        self.running.append(req)

    # ---- 2. decode ------------------------------------------------------------------------------
    def decode(self) -> None:
        """ONE forward for all running rows: each feeds its newest (pending) token."""
        rows = [r for r in self.running if not r.done or self.policy == "static"]
        if not rows:
            return
        rows = self._reserve_or_preempt(rows)
        if not rows:
            return
        idle = sum(r.done for r in rows)         # static batching: finished rows still computed
        try:
            logits = self._forward(rows)
        except Exception:  # noqa: BLE001  find the culprit: retry each row alone
            logits = None
        for i, req in enumerate(rows):
            try:
                row_logits = logits[i:i + 1] if logits is not None else self._forward([req])
                tok = self._sample(req, row_logits)
                if not req.done:                 # static-batching rows that already finished idle here
                    self._emit(req, tok)
            except Exception as e:  # noqa: BLE001  an engine error fails this request only
                self._fail(req, e)
        self.stats["decode_steps"] += 1
        self.history.append((self.steps, len(rows), idle))
        self.stats["decode_rows"] += len(rows)
        self.stats["idle_rows"] += idle

    def _forward(self, rows: list[Request]) -> Tensor:
        seqs = [r.blocks for r in rows]
        saved = [list(s.lengths) for s in seqs]
        cache = RaggedPagedCache(self.pool, seqs)
        x = torch.tensor([[r.output[-1]] for r in rows], dtype=torch.long, device=self.device)
        try:
            return self.model(x, attention_mask=cache.attention_mask(1), past_key_values=cache,
                              use_cache=True).logits[:, -1, :]
        except Exception:
            for s, n in zip(seqs, saved, strict=True):   # undo the layers that were written before the failure
                s.lengths[:] = n
            raise

    def _reserve_or_preempt(self, rows: list[Request]) -> list[Request]:
        """Make sure every row has a slot for one more token; preempt the newest rows if the pool is dry."""
        for req in list(rows):
            if req not in rows:
                continue                              # preempted below to make room for an older row
            while True:
                try:
                    self._reserve(req.blocks, req.blocks.length + 1)
                    break
                except RuntimeError:
                    victim = rows[-1]                 # the newest admitted row gives its blocks back
                    self._preempt(victim)
                    rows.remove(victim)
                    if victim is req:
                        break
        return rows

    def _preempt(self, req: Request) -> None:
        self.pool.release(req.blocks.table)
        req.blocks = None
        req.preemptions += 1
        self.stats["preemptions"] += 1
        self.running.remove(req)
        if not req.done:                              # (a finished static-batch row just leaves)
            self.waiting.appendleft(req)              # first in line when blocks free up again

    def _reserve(self, seq: SeqBlocks, n_positions: int) -> None:
        """Grow the block table to hold ``n_positions``; RuntimeError (pool dry) leaves it unchanged."""
        need = self.blocks_for(n_positions) - len(seq.table)
        if need > len(self.pool.free):
            raise RuntimeError(f"BlockPool has {len(self.pool.free)} free blocks, {need} needed")
        for _ in range(max(need, 0)):
            seq.table.append(self.pool.allocate())

    # ---- 3. evict -------------------------------------------------------------------------------
    def evict(self) -> None:
        """Finished rows leave the batch and free their blocks (static: only when all are done)."""
        if self.policy == "static" and not all(r.done for r in self.running):
            return
        keep = []
        for req in self.running:
            if req.done:
                self.release(req)
            else:
                keep.append(req)
        self.running = keep

    def _drop_aborted(self) -> None:
        for req in [r for r in self.waiting if r.aborted]:
            self.waiting.remove(req)
            self._finish(req, "abort")
        for req in self.running:
            if req.aborted and not req.done:
                self._finish(req, "abort")
        if self.policy == "continuous":
            self.evict()

    # ---- helpers --------------------------------------------------------------------------------
    def _sample(self, req: Request, logits: Tensor) -> int:
        # sample_next on a (1, vocab) row with the request's own generator: the same call that
        # generate() makes for this request alone, so seeded sampling is reproducible too.
        penalized = _apply_penalties(logits, req) if req.frequency_penalty or req.presence_penalty else logits
        tok = int(sample_next(penalized, req.temperature, None, req.top_p, req.generator)[0])
        if req.logprobs is not None:     # the model's own distribution (vLLM's default "raw_logprobs")
            req.pending_logprob = _top_logprobs(logits, tok, req.logprobs)
        return tok

    def _emit(self, req: Request, tok: int) -> None:
        req.output.append(tok)
        if req.logprobs is not None:
            req.token_logprobs.append(req.pending_logprob)
        if req.t_first is None:
            req.t_first, req.step_first = self.clock(), self.steps
        if req.on_token is not None:
            req.on_token(req, tok)
        if self.eos_id is not None and tok == self.eos_id:
            self._finish(req, "stop")
        elif len(req.output) >= req.max_tokens:
            self._finish(req, "length")

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason, req.t_done, req.step_done = reason, self.clock(), self.steps
        if req.on_finish is not None:
            req.on_finish(req)

    def _fail(self, req: Request, exc: BaseException) -> None:
        req.error = f"{type(exc).__name__}: {exc}"
        if req in self.running:
            self.running.remove(req)
        self.release(req)
        self._finish(req, "error")

    def release(self, req: Request) -> None:
        """Give the request's KV blocks back to the pool (idempotent)."""
        if req.blocks is not None:
            self.pool.release(req.blocks.table)
            req.blocks = None


def _apply_penalties(logits: Tensor, req: Request) -> Tensor:
    """OpenAI's penalties: ``logit - frequency_penalty * count - presence_penalty * (count > 0)``,
    counting the tokens this request generated so far (not its prompt), as vLLM does."""
    counts = torch.bincount(torch.tensor(req.output, dtype=torch.long), minlength=logits.shape[-1])
    counts = counts[:logits.shape[-1]].to(device=logits.device, dtype=torch.float32)
    return logits.float() - req.frequency_penalty * counts - req.presence_penalty * (counts > 0).float()


def _top_logprobs(logits: Tensor, tok: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """(log-probability of ``tok``, the ``k`` most likely (token, log-probability) pairs) of a (1, vocab) row."""
    lp = logits[0].float().log_softmax(-1)
    top = torch.topk(lp, min(k, lp.numel())) if k > 0 else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
    return float(lp[tok]), pairs


# --------------------------------------------------------------------------------------------
# Load experiments: a Poisson arrival trace replayed on a virtual clock (lesson 4.2.5, bench/)
# --------------------------------------------------------------------------------------------
@dataclass
class Arrival:
    time: float               # seconds after the start of the trace
    prompt_ids: list[int]
    max_tokens: int


def poisson_trace(n: int, rate: float, prompts: Sequence[Sequence[int]], short: tuple[int, int] = (4, 16),
                  long: tuple[int, int] = (64, 96), p_long: float = 0.25, seed: int = 0) -> list[Arrival]:
    """``n`` requests with exponential gaps (a Poisson process of ``rate`` requests/s).

    Answer lengths are a mix: mostly short, ``p_long`` of them long (chat traffic looks like this;
    it is also exactly what makes static batching wait on its longest row).
    """
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n, dtype=torch.float64).exponential_(rate, generator=g)
    times = torch.cumsum(gaps, 0) - gaps[0]          # the first request arrives at t = 0
    out = []
    for i in range(n):
        lo, hi = long if float(torch.rand((), generator=g)) < p_long else short
        m = int(torch.randint(lo, hi + 1, (), generator=g))
        out.append(Arrival(float(times[i]), list(prompts[int(torch.randint(len(prompts), (), generator=g))]), m))
    return out


def run_staggered(engine: Engine, prompts: Sequence[Sequence[int]], n: int = 24, every: int = 2,
                  max_steps: int = 2000) -> tuple[list[Request], list[int]]:
    """Submit ``n`` requests, one every ``every`` engine steps, and step until all are finished.

    Request ``i`` gets ``prompts[i % len(prompts)]`` (token ids) and ``max_tokens = 3 + (7 i) % 23``,
    so prompt and output lengths differ from request to request. Returns the requests and the
    running batch size after each step. The lesson's equivalence demo and the tests use this.
    """
    reqs: list[Request] = []
    running_sizes: list[int] = []
    step = 0
    while len(reqs) < n or engine.has_work:
        if len(reqs) < n and step % every == 0:
            i = len(reqs)
            reqs.append(engine.submit(list(prompts[i % len(prompts)]), 3 + (7 * i) % 23))
        engine.step()
        running_sizes.append(len(engine.running))
        step += 1
        if step >= max_steps:
            raise RuntimeError(f"run_staggered: requests still running after {max_steps} steps")
    return reqs, running_sizes


def replay_trace(engine: Engine, trace: Sequence[Arrival]) -> dict:
    """Feed ``trace`` to ``engine`` in real compute time, never sleeping.

    The clock is the time spent computing plus a virtual offset: when the engine is idle and the
    next request is in the future, the clock *jumps* to its arrival instead of waiting. A request
    arriving during a step is submitted right after that step (as a server would see it).
    Returns throughput (generated tokens / makespan) and latency percentiles: time to first token
    (TTFT, from arrival) and time per output token after the first (TPOT).
    """
    t0, offset = time.perf_counter(), 0.0

    def now() -> float:
        return time.perf_counter() - t0 + offset

    engine.clock = now
    reqs, i = [], 0
    while i < len(trace) or engine.has_work:
        while i < len(trace) and trace[i].time <= now():
            req = engine.submit(trace[i].prompt_ids, trace[i].max_tokens)
            req.t_submit = trace[i].time          # latency counts from arrival, not from submit
            reqs.append(req)
            i += 1
        if not engine.has_work:
            offset += trace[i].time - now()       # idle: jump to the next arrival
            continue
        engine.step()
    tokens = sum(len(r.output) for r in reqs)
    makespan = max(r.t_done for r in reqs) - trace[0].time
    ttft = [r.t_first - r.t_submit for r in reqs]
    tpot = [(r.t_done - r.t_first) / (len(r.output) - 1) for r in reqs if len(r.output) > 1]
    return {"requests": len(reqs), "tokens": tokens, "seconds": makespan, "tok_s": tokens / makespan,
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "tpot_p50": percentile(tpot, 50), "tpot_p95": percentile(tpot, 95),
            "decode_steps": engine.stats["decode_steps"], "idle_rows": engine.stats["idle_rows"],
            "decode_rows": engine.stats["decode_rows"], "outputs": [r.output for r in reqs]}


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    return float(torch.quantile(torch.tensor(list(xs), dtype=torch.float64), q / 100))


def step_seconds(model, batch: int, context: int = 64, repeats: int = 5) -> float:
    """Median wall time of one batched decode step (used to pick arrival rates per machine)."""
    eng = Engine(model, eos_id=None, max_batch=batch)
    for _ in range(batch):
        eng.submit([65] * context, repeats + 2)
    eng.step()                                    # admit + prefill everything, first decode
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.decode()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def batching_experiment(model, prompts: Sequence[Sequence[int]], loads: Sequence[float] = (0.5, 1.0, 2.0),
                        n: int = 48, rounds: int = 3, max_batch: int = 8, eos_id: int | None = None,
                        seed: int = 0) -> list[dict]:
    """Static vs continuous batching on the same Poisson traces, at several offered loads.

    ``load`` is the arrival rate as a fraction of the continuous engine's capacity, estimated on
    this machine as ``max_batch / (mean answer length x one decode step)``, so the experiment
    means the same thing on a fast and a slow CPU. Rounds interleave the two policies (static
    first in even rounds, continuous first in odd ones) so a slow spell hits both. One row per
    (load, round, policy).
    """
    t_step = step_seconds(model, max_batch)
    probe = poisson_trace(1000, 1.0, prompts, seed=seed)
    mean_len = sum(a.max_tokens for a in probe) / len(probe)
    capacity = max_batch / (mean_len * t_step)        # requests/s the continuous engine can absorb
    rows = []
    for r in range(rounds):
        for load in loads:
            trace = poisson_trace(n, load * capacity, prompts, seed=seed + r)
            order = ("static", "continuous") if r % 2 == 0 else ("continuous", "static")
            for policy in order:
                eng = Engine(model, eos_id=eos_id, max_batch=max_batch, policy=policy)
                res = replay_trace(eng, trace)
                res.update(policy=policy, load=load, rate=load * capacity, round=r, step_s=t_step)
                rows.append(res)
    return rows
