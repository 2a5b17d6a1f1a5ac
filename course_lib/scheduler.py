"""The scheduler: which requests run this step, how much of each prompt is prefilled, who is preempted.

It owns the two queues (``waiting``, oldest first; ``running``, in admission order) and decides; the
engine executes (``model_runner.py`` runs the forwards, ``block_manager.py`` holds the blocks). The
policy, once per engine step:

1. **prefill work** (``schedule``), under a per-step token budget ``max_step_tokens`` that starts with
   one token per decoding row:
   * with ``prefill_chunk = C`` (chunked prefill, as vLLM's scheduler does), at most ``C`` prompt
     tokens are prefilled per step, never past the budget: prompts already admitted but not yet fully
     prefilled go on first, oldest first, then new ones; a step's decode rows then wait for at most
     C tokens of prefill. Without it, a prompt is prefilled in one forward when it is admitted;
   * then **admission**, strict FIFO: the head of ``waiting`` joins when there is a batch row, budget
     for its (uncached part of the) prompt and KV blocks for it plus one more token. Without
     chunking, the first prompt of a step may exceed the budget (or a long prompt would starve).
2. **decode rows** (``decode_rows``): every running request whose prompt is fully in the cache;
   ``reserve_or_preempt`` gives each a slot for one more token, and when the pool is dry preempts the
   newest admitted request (vLLM's recompute policy): its blocks are released and it goes back to the
   front of ``waiting``, to be prefilled again (with prefix caching, mostly from its own blocks).

``policy="static"`` admits only when nothing runs (the baseline of lesson 4.2.5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from .block_manager import BlockManager, SeqBlocks

# A course_lib.engine.Request (prompt_ids, output, done, blocks, preemptions); not imported, because
# engine.py imports this module and the import graph stays acyclic (tests/test_imports.py).
Request = Any


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_batch: int,
        max_step_tokens: int,
        policy: str = "continuous",
        prefill_chunk: int | None = None,
        stats: dict | None = None,
    ) -> None:
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        if max_batch < 1 or max_step_tokens < 1:
            raise ValueError(f"max_batch and max_step_tokens must be >= 1, got {max_batch}, {max_step_tokens}")
        if prefill_chunk is not None and not 1 <= prefill_chunk:
            raise ValueError(f"prefill_chunk must be >= 1 (or None: no chunking), got {prefill_chunk}")
        if prefill_chunk is not None and max_step_tokens <= max_batch:
            # decode rows alone could then use the whole budget, and a chunked prompt would never move
            raise ValueError(
                f"with prefill_chunk, max_step_tokens ({max_step_tokens}) must exceed max_batch "
                f"({max_batch}): every step must leave budget for prefill"
            )
        self.blocks = block_manager
        self.max_batch, self.max_step_tokens = max_batch, max_step_tokens
        self.policy, self.prefill_chunk = policy, prefill_chunk
        self.stats = stats if stats is not None else {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    # ---- what a request needs -----------------------------------------------------------------
    @staticmethod
    def prefill_ids(req: Request) -> list[int]:
        """Tokens whose K/V a (re-)admitted request must hold before it decodes.

        A preempted request already has output: its newest token is still pending (sampled, not yet
        fed), so it needs prompt + all earlier output and then joins the decode rows."""
        return req.prompt_ids + req.output[:-1] if req.output else req.prompt_ids

    @staticmethod
    def prefill_tokens(req: Request) -> int:
        """Tokens a (re-)admission feeds through the model without a cache: prompt plus output so far."""
        return len(req.prompt_ids) + len(req.output)

    def remaining(self, req: Request) -> int:
        """Prefill tokens of a running request not yet in its cache (0 once it decodes)."""
        return len(self.prefill_ids(req)) - req.blocks.length

    def is_prefilling(self, req: Request) -> bool:
        return req.blocks is not None and self.remaining(req) > 0

    def lookup(self, req: Request) -> tuple[list[int], list[int]]:
        """(prefill ids, cached blocks holding their first whole blocks); no side effects.

        A fresh request keeps its last prompt token out of the lookup: the logits of that token are
        needed to sample the first output token (nano-vllm #144: a full hit left nothing to compute)."""
        ids = self.prefill_ids(req)
        return ids, self.blocks.match(ids, len(ids) if req.output else len(ids) - 1)

    # ---- 1. prefill work and admission ----------------------------------------------------------
    def _chunk(self, todo: int, budget: int, prefilled: int) -> int:
        """Tokens of a prompt to prefill now: at most ``prefill_chunk`` prompt tokens per step in all."""
        return min(todo, self.prefill_chunk - prefilled, self.max_step_tokens - budget)

    def can_admit(self, req: Request, budget_used: int) -> bool:
        """Room for the head of the queue, prefilled in one forward? A row, the budget, the blocks."""
        ids, matched = self.lookup(req)
        todo = len(ids) - len(matched) * self.blocks.block_size
        if len(self.running) >= self.max_batch:
            return False
        if budget_used > 0 and budget_used + todo > self.max_step_tokens:
            return False
        # + 1: the first decode step right after needs a slot for the token prefill sampled
        return self.blocks.can_allocate(len(ids) + 1, matched)

    def start(self, req: Request, matched: list[int]) -> int:
        """Admit ``req``: its blocks (cached ones shared, the rest fresh) and a place in ``running``.

        Returns how many prefill tokens came from the cache."""
        req.blocks = SeqBlocks(len(self.blocks.pool.k))
        n_cached = self.blocks.allocate(req.blocks, matched, len(self.prefill_ids(req)))
        self.running.append(req)
        self.stats["cached_tokens"] = self.stats.get("cached_tokens", 0) + n_cached
        return n_cached

    def schedule(self) -> Iterator[tuple[Request, int]]:
        """Yield ``(request, tokens to prefill now)``; the engine runs each before the next is chosen.

        Lazily, so a prompt admitted second in a step already finds the blocks the first one has just
        registered in the prefix cache."""
        budget = sum(not self.is_prefilling(r) for r in self.running)  # one token per decoding row
        prefilled = 0  # prompt tokens this step
        if self.prefill_chunk is not None:
            for req in [r for r in self.running if self.is_prefilling(r)]:
                n = self._chunk(self.remaining(req), budget, prefilled)
                if n <= 0:
                    return
                budget, prefilled = budget + n, prefilled + n
                yield req, n
        if self.policy == "static" and self.running:
            return  # static: the running batch must finish first
        while self.waiting and len(self.running) < self.max_batch:
            req = self.waiting[0]
            ids, matched = self.lookup(req)
            todo = len(ids) - len(matched) * self.blocks.block_size
            if self.prefill_chunk is None:
                if budget > 0 and budget + todo > self.max_step_tokens:
                    return
                n = todo
            else:
                n = self._chunk(todo, budget, prefilled)
                if todo > 0 and n <= 0:
                    return
            if not self.blocks.can_allocate(len(ids) + 1, matched):
                return
            self.waiting.popleft()
            self.start(req, matched)
            budget, prefilled = budget + n, prefilled + n
            yield req, n

    # ---- 2. decode rows and preemption ----------------------------------------------------------
    def decode_rows(self) -> list[Request]:
        """Running requests that feed one token this step (static: finished rows too, idling)."""
        return [r for r in self.running if not self.is_prefilling(r) and (not r.done or self.policy == "static")]

    def reserve_or_preempt(self, rows: list[Request]) -> list[Request]:
        """Give every row a slot for one more token; preempt the newest requests while the pool is dry."""
        rows = list(rows)
        for req in list(rows):
            if req not in rows:
                continue  # preempted below to make room for an older row
            while True:
                try:
                    self.blocks.reserve(req.blocks, req.blocks.length + 1)
                    break
                except RuntimeError:
                    victim = self._victim(rows)
                    self.preempt(victim)
                    if victim in rows:
                        rows.remove(victim)
                    if victim is req:
                        break
        return rows

    def _victim(self, rows: list[Request]) -> Request:
        """The newest admitted request holding blocks: a decode row or a prompt being prefilled."""
        return next(r for r in reversed(self.running) if r in rows or self.is_prefilling(r))

    def preempt(self, req: Request) -> None:
        """Release ``req``'s blocks and put it first in line (a finished static-batch row just leaves)."""
        self.blocks.release(req.blocks)
        req.blocks = None
        req.preemptions += 1
        self.stats["preemptions"] = self.stats.get("preemptions", 0) + 1
        self.running.remove(req)
        if not req.done:
            self.waiting.appendleft(req)  # first in line when blocks free up again
