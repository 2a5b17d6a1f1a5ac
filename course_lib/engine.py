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

Lesson 4.2.6 adds three options: ``prefix_cache=True`` (full KV blocks shared between requests whose
token prefixes are equal, ``block_manager.py``), ``prefill_chunk=C`` (at most C prompt tokens
prefilled per step, so a long prompt is prefilled over several steps, interleaved with the running
batch's decode steps, ``scheduler.py``) and ``speculative=SpecConfig(proposer, k)`` (speculative
decoding, ``speculative.py``): each decode step every row feeds its pending token plus up to k
proposed ones, all rows in ONE ragged forward (``ModelRunner.verify``); each row keeps the proposals
its own sampler agrees with plus one token of the model's, and ``BlockManager.truncate`` rolls the
rejected positions back and returns their blocks. Proposals only use blocks the pool can spare:
speculation never preempts anybody (a row short of blocks proposes fewer tokens).

Verification samples every position with the request's own sampler (``_sample``: temperature, top-p,
penalties, its generator) and stops at the first sampled token that differs from the proposal. For a
deterministic proposal (prompt lookup; a draft model drafting greedily) this IS the accept / reject
rule with the residual distribution: the proposal x is kept with probability p(x), otherwise the
token drawn is distributed as p without x, renormalised. Every emitted token is drawn from the
model's own distribution exactly as plain decoding draws it, one generator draw per token, so
greedy output is identical and seeded sampling draws the same numbers as without speculation.

The job is split the way nano-vllm splits it: ``scheduler.py`` decides (queues, admission, chunks,
preemption), ``block_manager.py`` keeps the blocks (tables, reference counts, prefix cache),
``model_runner.py`` runs the forwards (one prompt; one token for many rows), and this module holds
the requests and the loop that ties them (``Engine``), plus sampling and the request lifecycle.

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

from .block_manager import BlockManager, SeqBlocks
from .generate import sample_next
from .kv_cache import BlockPool
from .model_runner import ModelRunner
from .scheduler import Scheduler
from .speculative import SpecConfig, _n_accepted
from .util import cdiv


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
    logprobs: int | None = None  # None: record nothing
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list, repr=False)
    pending_logprob: tuple[float, list[tuple[int, float]]] | None = field(default=None, repr=False)
    proposer: object | None = field(default=None, repr=False)  # speculative decoding: this request's proposer
    on_token: Callable[[Request, int], None] | None = field(default=None, repr=False)  # from the engine thread
    on_finish: Callable[[Request], None] | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS) | "length" | "abort" | "error"
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
    """Scheduler + block manager + model runner, one ``step()`` per iteration.

    ``policy="continuous"`` admits at every step and evicts finished rows at once;
    ``policy="static"`` is the baseline: a batch is formed only when none is running, and
    finished rows keep being computed (their output ignored) until the batch's longest request
    ends, as a plain ``generate`` over a fixed batch does. ``prefix_cache``, ``prefill_chunk`` and
    ``speculative``: see the module docstring.

    ``admit``, ``prefill``, ``decode`` and ``evict`` are the four steps a lesson (and exercise
    ex425, which replaces ``admit`` / ``evict``) works with; ``waiting``, ``running``,
    ``max_batch``, ``max_step_tokens``, ``prefill_tokens`` and ``blocks_for`` are the scheduler's.
    """

    def __init__(
        self,
        model,
        *,
        eos_id: int | None = None,
        max_batch: int = 8,
        max_step_tokens: int = 512,
        num_blocks: int | None = None,
        block_size: int = 16,
        policy: str = "continuous",
        prefix_cache: bool = False,
        prefill_chunk: int | None = None,
        speculative: SpecConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if speculative is not None and not isinstance(speculative, SpecConfig):
            raise TypeError(
                f"speculative must be a course_lib.speculative.SpecConfig (or None), got {type(speculative).__name__}"
            )
        self.model = model.eval()
        self.spec = speculative
        self.eos_id, self.clock = eos_id, clock
        self.max_len = model.config.max_seq_len
        if num_blocks is None:  # enough for every row to reach the full context
            num_blocks = max_batch * cdiv(self.max_len, block_size)
        self.stats = {
            "decode_steps": 0,
            "decode_rows": 0,
            "idle_rows": 0,
            "prefill_tokens": 0,
            "preemptions": 0,
            "cached_tokens": 0,
            "spec_rows": 0,  # speculative: row-steps verified, tokens proposed / accepted / emitted by them
            "spec_proposed": 0,
            "spec_accepted": 0,
            "spec_emitted": 0,
        }
        self.pool = BlockPool.for_model(model, num_blocks=num_blocks, block_size=block_size)
        self.block_manager = BlockManager(self.pool, prefix_cache=prefix_cache)
        self.scheduler = Scheduler(
            self.block_manager,
            max_batch=max_batch,
            max_step_tokens=max_step_tokens,
            policy=policy,
            prefill_chunk=prefill_chunk,
            stats=self.stats,
        )
        self.runner = ModelRunner(self.model, self.pool)
        self.device = self.runner.device
        self.inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()  # submit() from any thread
        self.steps = 0
        self.history: list[tuple[int, int, int]] = []  # per decode step: (step, rows computed, idle rows)

    # ---- the scheduler's state, under the names the lessons and ex425 use ------------------------
    @property
    def waiting(self) -> deque[Request]:
        return self.scheduler.waiting

    @property
    def running(self) -> list[Request]:
        return self.scheduler.running

    @running.setter
    def running(self, rows: list[Request]) -> None:
        self.scheduler.running = rows

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def max_step_tokens(self) -> int:
        return self.scheduler.max_step_tokens

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    def blocks_for(self, n_tokens: int) -> int:
        """KV blocks needed to hold ``n_tokens`` positions (rounded up to whole blocks)."""
        return self.block_manager.blocks_for(n_tokens)

    prefill_tokens = staticmethod(Scheduler.prefill_tokens)

    def can_admit(self, req: Request, budget_used: int) -> bool:
        """Room for one more row? A batch slot, the token budget, and blocks for its prefill + 1."""
        return self.scheduler.can_admit(req, budget_used)

    def prefix_cache_stats(self) -> dict:
        """Prefill tokens taken from the cache vs computed, and the token hit rate."""
        saved, computed = self.stats["cached_tokens"], self.stats["prefill_tokens"]
        return {
            "cached_tokens": saved,
            "computed_tokens": computed,
            "hit_rate": saved / (saved + computed) if saved + computed else 0.0,
            **self.block_manager.cache_stats(),
        }

    def spec_stats(self) -> dict:
        """Speculative decoding: tokens emitted per row per verify step, and the acceptance rate."""
        s = self.stats
        return {
            "verify_rows": s["spec_rows"],
            "proposed": s["spec_proposed"],
            "accepted": s["spec_accepted"],
            "tokens_per_step": s["spec_emitted"] / s["spec_rows"] if s["spec_rows"] else 0.0,
            "acceptance_rate": s["spec_accepted"] / s["spec_proposed"] if s["spec_proposed"] else 0.0,
        }

    # ---- submitting ---------------------------------------------------------------------------
    def check(self, n_prompt: int, max_tokens: int) -> None:
        """Raise ``RequestRefused`` when a request of this size can never be served."""
        if n_prompt < 1:
            raise RequestRefused("prompt: needs at least one token")
        if max_tokens < 1:
            raise RequestRefused(f"max_tokens: must be >= 1, got {max_tokens}")
        if n_prompt + max_tokens > self.max_len:
            raise RequestRefused(
                f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                f"context of {self.max_len} tokens; shorten the prompt or lower max_tokens"
            )
        need = self.blocks_for(n_prompt + max_tokens)
        if need > self.pool.num_blocks:
            raise RequestRefused(
                f"needs {need} KV blocks but the pool has {self.pool.num_blocks}; "
                "lower max_tokens or start the engine with more blocks"
            )

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

    # ---- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """One iteration: take new arrivals, prefill work (admit), one batched decode step, evict."""
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

    # ---- 1. admit and prefill -------------------------------------------------------------------
    def admit(self) -> None:
        """Run the prefill work the scheduler picks: new admissions, oldest first, and (chunked
        prefill) the next chunk of prompts already admitted. Strict FIFO: when the head of the
        queue does not fit, nobody behind it jumps ahead (a big request would otherwise starve
        behind a stream of small ones)."""
        for req, n in self.scheduler.schedule():
            self._prefill(req, n)

    def prefill(self, req: Request) -> None:
        """Admit ``req`` now and prefill all of it (B = 1, no padding); a fresh request samples its
        first token. A preempted request already has output: its newest token is still pending, so it
        prefills prompt + all earlier output and joins the next decode step. (ex425's ``admit`` calls
        this after its own checks; with ``prefix_cache`` the cached blocks are used here too.)"""
        try:
            _ids, matched = self.scheduler.lookup(req)
            self.scheduler.start(req, matched)
        except Exception as e:  # noqa: BLE001  an engine error fails this request only
            self._fail(req, e)
            return
        self._prefill(req, self.scheduler.remaining(req))

    def _prefill(self, req: Request, n: int) -> None:
        """Feed the next ``n`` prefill tokens of an admitted request; sample once the prompt is in."""
        ids, seq = self.scheduler.prefill_ids(req), req.blocks
        try:
            if n > 0:
                logits = self.runner.prefill(seq, ids[seq.length : seq.length + n])
                self.stats["prefill_tokens"] += n
                self.block_manager.commit(seq, ids)
                if seq.length == len(ids) and not req.output:
                    self._emit(req, self._sample(req, logits))
        except Exception as e:  # noqa: BLE001  an engine error fails this request only
            self._fail(req, e)

    # ---- 2. decode ------------------------------------------------------------------------------
    def decode(self) -> None:
        """ONE forward for all decoding rows: each feeds its newest (pending) token."""
        rows = self.scheduler.decode_rows()
        if not rows:
            return
        rows = self.scheduler.reserve_or_preempt(rows)
        if not rows:
            return
        if self.spec is not None:
            self._verify(rows)
            return
        idle = sum(r.done for r in rows)  # static batching: finished rows still computed
        try:
            logits = self._forward(rows)
        except Exception:  # noqa: BLE001  find the culprit: retry each row alone
            logits = None
        for i, req in enumerate(rows):
            try:
                row_logits = logits[i : i + 1] if logits is not None else self._forward([req])
                tok = self._sample(req, row_logits)
                if not req.done:  # static-batching rows that already finished idle here
                    self._emit(req, tok)
                    if self.block_manager.prefix_cache:
                        self.block_manager.commit(req.blocks, req.prompt_ids + req.output)
            except Exception as e:  # noqa: BLE001  an engine error fails this request only
                self._fail(req, e)
        self._record(rows, idle)

    def _record(self, rows: list[Request], idle: int) -> None:
        self.stats["decode_steps"] += 1
        self.history.append((self.steps, len(rows), idle))
        self.stats["decode_rows"] += len(rows)
        self.stats["idle_rows"] += idle

    def _forward(self, rows: list[Request]) -> Tensor:
        return self.runner.decode([r.blocks for r in rows], [r.output[-1] for r in rows])

    # ---- 2'. decode, speculative ----------------------------------------------------------------
    def _verify(self, rows: list[Request]) -> None:
        """ONE forward for all decoding rows, each feeding its pending token + its proposals."""
        idle = sum(r.done for r in rows)
        fed, feeds = [], []
        for req in rows:
            try:
                feeds.append(self._propose(req))
                fed.append(req)
            except Exception as e:  # noqa: BLE001  a failing proposer fails this request only
                self._fail(req, e)
        try:
            logits = self.runner.verify([r.blocks for r in fed], feeds) if fed else None
        except Exception:  # noqa: BLE001  find the culprit: retry each row alone
            logits = None
        for i, (req, feed) in enumerate(zip(fed, feeds, strict=True)):
            try:
                row = logits[i] if logits is not None else self.runner.verify([req.blocks], [feed])[0]
                self._accept(req, feed, row)
            except Exception as e:  # noqa: BLE001  an engine error fails this request only
                self._fail(req, e)
        self._record(rows, idle)

    def _propose(self, req: Request) -> list[int]:
        """[pending token] + up to k proposals, with blocks reserved for them from what the pool spares."""
        room = min(self.spec.k, req.max_tokens - len(req.output) - 1)  # the verify step emits one more
        if req.done or room < 1:  # (a finished static-batching row idles on its one token)
            return [req.output[-1]]
        if req.proposer is None:
            req.proposer = self.spec.proposer.fork()
        proposal = list(req.proposer.propose(req.prompt_ids + req.output, room)[0])[:room]
        seq = req.blocks
        try:
            self.block_manager.reserve(seq, seq.length + 1 + len(proposal))
        except RuntimeError:  # the pool is short: speculate only into the blocks the row already holds
            proposal = proposal[: max(0, len(seq.table) * self.block_manager.block_size - seq.length - 1)]
        return [req.output[-1]] + proposal

    def _accept(self, req: Request, feed: list[int], logits: Tensor) -> None:
        """Sample position by position; keep going while the sampled token equals the proposal."""
        seq = req.blocks
        start = seq.length - len(feed)  # positions held before this verify forward
        if req.done:  # a finished static-batching row: its one idle position stays, as in plain decode
            return
        proposal, emitted = feed[1:], []
        for i in range(len(feed)):
            tok = self._sample(req, logits[i : i + 1])
            self._emit(req, tok)
            emitted.append(tok)
            if req.done or i == len(proposal) or tok != proposal[i]:
                break
        # the cache keeps [pending token] + the accepted proposals; the last emitted token is pending
        self.block_manager.truncate(seq, start + len(emitted))
        if req.proposer is not None:  # a draft model crops its own cache to the final tokens
            req.proposer.accepted(len(emitted), len(req.prompt_ids) + len(req.output) - 1)
        if self.block_manager.prefix_cache:
            self.block_manager.commit(seq, req.prompt_ids + req.output)
        self.stats["spec_rows"] += 1
        self.stats["spec_proposed"] += len(proposal)
        self.stats["spec_accepted"] += _n_accepted(emitted, proposal)
        self.stats["spec_emitted"] += len(emitted)

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
        if req.logprobs is not None:  # the model's own distribution (vLLM's default "raw_logprobs")
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
            self.block_manager.release(req.blocks)
            req.blocks = None
        if req.done:
            req.proposer = None  # a draft model's cache goes with it


def _apply_penalties(logits: Tensor, req: Request) -> Tensor:
    """OpenAI's penalties: ``logit - frequency_penalty * count - presence_penalty * (count > 0)``,
    counting the tokens this request generated so far (not its prompt), as vLLM does."""
    counts = torch.bincount(torch.tensor(req.output, dtype=torch.long), minlength=logits.shape[-1])
    counts = counts[: logits.shape[-1]].to(device=logits.device, dtype=torch.float32)
    return logits.float() - req.frequency_penalty * counts - req.presence_penalty * (counts > 0).float()


def _top_logprobs(logits: Tensor, tok: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """(log-probability of ``tok``, the ``k`` most likely (token, log-probability) pairs) of a (1, vocab) row."""
    lp = logits[0].float().log_softmax(-1)
    top = torch.topk(lp, min(k, lp.numel())) if k > 0 else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
    return float(lp[tok]), pairs
