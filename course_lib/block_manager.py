"""The block manager: who holds which KV blocks of the pool, and (prefix caching) which blocks hold what.

The ``BlockPool`` (``kv_cache.py``, lesson 4.2.3) is storage plus a free list. This module keeps the
bookkeeping on top of it, the way nano-vllm's ``engine/block_manager.py`` does:

* every sequence owns a block table (``SeqBlocks``): position ``p`` lives in slot ``p % block_size``
  of block ``table[p // block_size]``;
* every block has a reference count: how many block tables list it;
* with ``prefix_cache=True``, every *full* block a sequence has computed is registered under a hash
  chain: ``hash(parent block's hash, this block's token ids)``. The parent hash makes the key name the
  whole prefix, so two sequences share block ``i`` only if tokens ``0 .. (i+1)*block_size - 1`` are all
  equal (the K/V of a position depend on every token before it). A new sequence whose prompt starts
  with cached blocks puts those blocks in its own table (reference count + 1) and prefills only the
  rest.

Freed blocks (reference count 0) go back to the pool's free list, but a *cached* one keeps its hash:
it is still a hit until the pool needs the space. The free list is ordered so the pool hands out
blocks that hold nothing cached first, then cached blocks least recently freed first (an LRU); a
block handed out fresh loses its hash at that moment (evicted). ``len(pool.free)`` therefore stays
the number of blocks a sequence could get, cached or not.

Why a hit never reads a block that is being rewritten: only full blocks are ever registered or
shared, and a sequence writes only at positions at or after its own length, which lie in blocks
after every block it shares. The last prompt token of a fresh request is never taken from the cache
(its logits are needed to sample the first token), and a block is registered only after its K/V has
been written by a forward pass.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from .kv_cache import BlockPool
from .util import cdiv


@dataclass
class SeqBlocks:
    """The KV blocks of one sequence: a block table and how many positions each layer holds.

    ``hashes[i]`` is the chain hash of full block ``i`` once it is known (prefix caching only)."""

    n_layers: int
    table: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [0] * self.n_layers

    @property
    def length(self) -> int:
        return self.lengths[-1]  # the last layer is written last: positions complete in every layer


def chain_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """The key of a full block: a digest of its parent's key and its own token ids.

    A 128-bit BLAKE2 digest: deterministic across processes (Python's ``hash`` of a tuple is too, but
    64-bit) and collision-free for any practical pool. ``array("q")`` packs the ids as int64s."""
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    """Allocation, reference counts and the prefix cache over one ``BlockPool``.

    ``match(ids, limit)`` looks up (no side effects) the cached blocks that hold the longest prefix
    of ``ids`` in whole blocks, at most ``limit`` tokens; ``can_allocate`` / ``allocate`` give a new
    sequence those blocks plus fresh ones; ``reserve`` grows a table; ``commit`` registers the full
    blocks a forward has just written; ``release`` drops a sequence's references.
    """

    def __init__(self, pool: BlockPool, prefix_cache: bool = False) -> None:
        self.pool, self.prefix_cache = pool, prefix_cache
        self.block_size = pool.block_size
        self.refs = [0] * pool.num_blocks
        self.cached: dict[bytes, int] = {}  # chain hash -> block holding it
        self.hash_of: dict[int, bytes] = {}  # block -> its chain hash (registered blocks only)
        self.stats = {"lookups": 0, "hit_blocks": 0, "evictions": 0}

    # ---- sizes ---------------------------------------------------------------------------------
    def blocks_for(self, n_tokens: int) -> int:
        """KV blocks needed to hold ``n_tokens`` positions (rounded up to whole blocks)."""
        return cdiv(n_tokens, self.block_size)

    @property
    def num_free(self) -> int:
        """Blocks a sequence could get now: unused ones plus cached ones nobody references."""
        return len(self.pool.free)

    # ---- the prefix cache: lookup ----------------------------------------------------------------
    def match(self, token_ids: Sequence[int], limit: int) -> list[int]:
        """Blocks that hold the first whole blocks of ``token_ids`` (at most ``limit`` tokens), in order.

        A pure lookup: nothing is referenced until ``allocate``. The caller budgets its prefill on
        ``len(token_ids) - block_size * len(match)`` tokens *after* this lookup (nano-vllm PR #211:
        budgeting on the length before the lookup put a re-admitted sequence out of step)."""
        if not self.prefix_cache:
            return []
        bs, parent, out = self.block_size, b"", []
        for i in range(limit // bs):
            h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
            block = self.cached.get(h)
            if block is None:
                break
            out.append(block)
            parent = h
        return out

    # ---- allocation --------------------------------------------------------------------------------
    def can_allocate(self, n_positions: int, matched: Sequence[int] = ()) -> bool:
        """Room for a new sequence of ``n_positions`` that reuses ``matched``?

        A matched block nobody references sits in the free list: taking it costs a free block too."""
        fresh = self.blocks_for(n_positions) - len(matched)
        from_free = sum(self.refs[b] == 0 for b in matched)
        return max(fresh, 0) + from_free <= self.num_free

    def allocate(self, seq: SeqBlocks, matched: Sequence[int], n_positions: int) -> int:
        """Give the empty ``seq`` the ``matched`` blocks (shared) and fresh ones up to ``n_positions``.

        Returns the number of cached tokens: every layer of ``seq`` already holds them."""
        if seq.table:
            raise ValueError("allocate: the sequence already holds blocks; release them first")
        if not self.can_allocate(n_positions, matched):
            raise RuntimeError(f"BlockPool has {self.num_free} free blocks, not enough for {n_positions} positions")
        for b in matched:
            if self.refs[b] == 0:
                self.pool.free.remove(b)  # a cached block nobody held: out of the free list again
            self.refs[b] += 1
            seq.table.append(b)
            seq.hashes.append(self.hash_of[b])
        n_cached = len(matched) * self.block_size
        seq.lengths[:] = [n_cached] * len(seq.lengths)
        self.stats["lookups"] += 1
        self.stats["hit_blocks"] += len(matched)
        self.reserve(seq, n_positions)
        return n_cached

    def _take_fresh(self) -> int:
        block = self.pool.allocate()
        h = self.hash_of.pop(block, None)
        if h is not None:  # the least recently freed cached block: evicted now, it is about to be rewritten
            del self.cached[h]
            self.stats["evictions"] += 1
        self.refs[block] = 1
        return block

    def reserve(self, seq: SeqBlocks, n_positions: int) -> None:
        """Grow the block table to hold ``n_positions``; RuntimeError (pool dry) leaves it unchanged."""
        need = self.blocks_for(n_positions) - len(seq.table)
        if need > self.num_free:
            raise RuntimeError(f"BlockPool has {self.num_free} free blocks, {need} needed")
        for _ in range(max(need, 0)):
            seq.table.append(self._take_fresh())

    def truncate(self, seq: SeqBlocks, n_positions: int) -> None:
        """Roll ``seq`` back to its first ``n_positions`` (speculative decoding: drop the K/V of rejected
        proposals) and give back the blocks past them.

        The dropped positions lie at or after the length the sequence had before its verify forward,
        so every block they touch is one only this sequence holds and no hash names (shared and
        registered blocks are full blocks *before* that length): the freed ones go to the end of the
        free list, like any plain block."""
        if n_positions > seq.length:
            raise ValueError(f"truncate: the sequence holds {seq.length} positions, cannot grow to {n_positions}")
        if n_positions < len(seq.hashes) * self.block_size:
            raise ValueError("truncate: would cut into a registered (possibly shared) block")
        seq.lengths[:] = [n_positions] * len(seq.lengths)
        keep = self.blocks_for(n_positions)
        for b in reversed(seq.table[keep:]):
            self.refs[b] -= 1
            if self.refs[b] == 0:  # (a registered block would go to the front; none can be here)
                self.pool.free.append(b)
        del seq.table[keep:]

    # ---- the prefix cache: insert ------------------------------------------------------------------
    def commit(self, seq: SeqBlocks, token_ids: Sequence[int]) -> None:
        """Register the full blocks of ``seq`` that a forward has completed since the last commit.

        ``token_ids`` are the tokens whose K/V ``seq`` holds (at least ``seq.length`` of them). When an
        identical block is already registered (two sequences computed the same prefix at once), the
        first one stays the cached copy and this one is freed as a plain block later."""
        if not self.prefix_cache:
            return
        bs = self.block_size
        for i in range(len(seq.hashes), seq.length // bs):
            parent = seq.hashes[-1] if seq.hashes else b""
            h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
            seq.hashes.append(h)
            block = seq.table[i]
            if h not in self.cached and block not in self.hash_of:
                self.cached[h] = block
                self.hash_of[block] = h

    # ---- release -------------------------------------------------------------------------------------
    def release(self, seq: SeqBlocks) -> None:
        """Drop ``seq``'s references (a finished or preempted sequence); the table is emptied.

        A block whose count reaches 0 returns to the free list: a plain block at the end (handed out
        next), a cached block at the front (handed out last, so it stays a hit as long as possible).
        Tail blocks first, so the LRU evicts the end of a chain before its beginning."""
        for b in reversed(seq.table):
            self.refs[b] -= 1
            if self.refs[b] < 0:
                raise RuntimeError(f"block {b} released more often than it was referenced")
            if self.refs[b] == 0:
                if b in self.hash_of:
                    self.pool.free.insert(0, b)
                else:
                    self.pool.free.append(b)
        seq.table.clear()
        seq.hashes.clear()
        seq.lengths[:] = [0] * len(seq.lengths)

    # ---- checks ------------------------------------------------------------------------------------
    def check(self, tables: Sequence[Sequence[int]]) -> None:
        """Raise AssertionError unless the counts match ``tables`` (every live block table) exactly."""
        want = [0] * self.pool.num_blocks
        for t in tables:
            for b in t:
                want[b] += 1
        assert want == self.refs, "reference counts differ from the live block tables"
        free = self.pool.free
        assert len(set(free)) == len(free), "a block is in the free list twice"
        assert sorted(free) == [b for b in range(self.pool.num_blocks) if want[b] == 0], (
            "the free list is not exactly the unreferenced blocks"
        )
        assert all(self.cached[h] == b for b, h in self.hash_of.items()) and len(self.cached) == len(self.hash_of)

    def cache_stats(self) -> dict:
        """Block-level hit rate of the lookups so far (prefill tokens saved: see ``Engine.stats``)."""
        s = dict(self.stats)
        s["cached_blocks"] = len(self.cached)
        return s
