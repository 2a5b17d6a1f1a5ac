"""The model runner: forward passes over sequences that keep their K/V in paged blocks.

Two kinds of forward, both over the block tables the block manager has already grown (so a dry
pool never fails half-way through the layers):

* ``prefill(seq, ids)``: one sequence, ``len(ids)`` new tokens after the ``seq.length`` positions it
  already holds (0 for a fresh prompt; more for a prefix-cache hit or the next chunk of a chunked
  prefill). B = 1, so no padding: the model's causal mask is offset by the cached length.
* ``decode(seqs, tokens)``: one new token for each of many sequences of different lengths in ONE
  forward, through ``RaggedPagedCache``, a left-padded view with the mask and per-row positions the
  model already supports (lesson 4.2.4).
* ``verify(seqs, feeds)`` (speculative decoding): a *different* number of new tokens per sequence
  (its last token + its proposals) in ONE forward; logits at every new position. Short rows are
  padded on the right with dummies that are never written to the pool: causal attention keeps them
  out of every real token's output, and their logits are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .block_manager import SeqBlocks
from .kv_cache import BlockPool, Cache


class RaggedPagedCache(Cache):
    """A left-padded batch view over sequences that each own their blocks in one ``BlockPool``.

    Row ``b`` holds ``n_b`` cached positions; the view is ``L = max(n_b)`` wide and row ``b``
    occupies its last ``n_b`` slots, so the model sees the same layout as a left-padded batch
    (lesson 4.2.4): ``attention_mask(T)`` marks the padding, and the model derives each row's
    position ids from that mask. Rows can have different lengths because each row's new tokens are
    written into *its own* blocks at *its own* next position. Blocks must already be reserved
    (the engine does it before the forward, so a full pool never fails half-way through layers).
    """

    def __init__(self, pool: BlockPool, seqs: Sequence[SeqBlocks], n_real: Sequence[int] | None = None) -> None:
        # n_real[b]: how many of the step's new tokens are real for row b (the rest: right-padding
        # dummies of a ragged verify step, never written). None: all of them.
        self.pool, self.seqs = pool, list(seqs)
        self.n_real = list(n_real) if n_real is not None else None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(s.lengths[layer_idx] for s in self.seqs)

    def attention_mask(self, new_tokens: int) -> Tensor:
        """(B, L + new_tokens): 0 on the left padding, 1 on every real (cached or new) position."""
        L = self.get_seq_length()
        mask = torch.zeros(len(self.seqs), L + new_tokens, dtype=torch.long, device=self.pool.k[0].device)
        for b, s in enumerate(self.seqs):
            mask[b, L - s.lengths[0] :] = 1
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
        if B > 1 and T > 1 and self.n_real is None:
            # A multi-token step for rows of different lengths would write their padding too.
            raise ValueError("RaggedPagedCache: prefill one sequence at a time (B == 1) or decode one token (T == 1)")
        real = self.n_real if self.n_real is not None else [T] * B
        starts = [s.lengths[layer_idx] for s in self.seqs]
        for s, n, r in zip(self.seqs, starts, real, strict=True):
            if n + r > len(s.table) * self.pool.block_size:
                raise RuntimeError(
                    f"sequence needs {n + r} slots but holds {len(s.table)} blocks; reserve blocks first"
                )
        kp, vp = self.pool.k[layer_idx], self.pool.v[layer_idx]
        # 1. write: row b's real new tokens go to positions starts[b] .. starts[b] + real[b] - 1 of its own blocks
        if all(r == T for r in real):
            blk, slot = self._slots([list(range(n, n + T)) for n in starts])
            kp[blk, :, slot] = k.permute(0, 2, 1, 3)  # (B, T, H, D) into (block, :, slot)
            vp[blk, :, slot] = v.permute(0, 2, 1, 3)
        else:  # a ragged verify step: only the real tokens, flattened to (N, H, D)
            bs, dev = self.pool.block_size, kp.device
            rows = torch.tensor([b for b, r in enumerate(real) for _ in range(r)], dtype=torch.long, device=dev)
            cols = torch.tensor([j for r in real for j in range(r)], dtype=torch.long, device=dev)
            ps = [n + j for n, r in zip(starts, real, strict=True) for j in range(r)]
            tbl = [s.table for s, r in zip(self.seqs, real, strict=True) for _ in range(r)]
            blk = torch.tensor([t[p // bs] for t, p in zip(tbl, ps, strict=True)], dtype=torch.long, device=dev)
            slot = torch.tensor([p % bs for p in ps], dtype=torch.long, device=dev)
            kp[blk, :, slot] = k.permute(0, 2, 1, 3)[rows, cols]
            vp[blk, :, slot] = v.permute(0, 2, 1, 3)[rows, cols]
        for s, r in zip(self.seqs, real, strict=True):
            s.lengths[layer_idx] += r
        # 2. gather the left-padded view: row b's position p sits at column L_new - n_b + p, its
        # dummies (positions n_b + real_b .. n_b + T - 1, at the right end) are read as padding
        L_new = max(starts) + T
        pos = [
            [p if p < n + r else -1 for p in (c - (L_new - (n + T)) for c in range(L_new))]
            for n, r in zip(starts, real, strict=True)
        ]  # < 0 on the padding
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


class ModelRunner:
    """Runs the model over paged sequences and returns last-position logits; no scheduling here."""

    def __init__(self, model, pool: BlockPool) -> None:
        self.model, self.pool = model, pool
        self.device = next(model.parameters()).device

    def prefill(self, seq: SeqBlocks, ids: Sequence[int]) -> Tensor:
        """Feed ``ids`` after the ``seq.length`` positions ``seq`` holds; (1, vocab) logits of the last one."""
        cache = RaggedPagedCache(self.pool, [seq])
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        saved = list(seq.lengths)
        try:
            return self.model(x, past_key_values=cache, use_cache=True).logits[:, -1, :]
        except Exception:
            seq.lengths[:] = saved  # undo the layers written before the failure
            raise

    def decode(self, seqs: Sequence[SeqBlocks], tokens: Sequence[int]) -> Tensor:
        """ONE forward: row ``b`` feeds ``tokens[b]`` at its own next position; (B, vocab) logits."""
        saved = [list(s.lengths) for s in seqs]
        cache = RaggedPagedCache(self.pool, seqs)
        x = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device)
        try:
            return self.model(x, attention_mask=cache.attention_mask(1), past_key_values=cache, use_cache=True).logits[
                :, -1, :
            ]
        except Exception:
            for s, n in zip(seqs, saved, strict=True):  # undo the layers written before the failure
                s.lengths[:] = n
            raise

    def verify(self, seqs: Sequence[SeqBlocks], feeds: Sequence[Sequence[int]]) -> Tensor:
        """ONE forward: row ``b`` feeds ``feeds[b]`` (1 + its proposals) at its own next positions;
        (B, T, vocab) logits, T = the longest feed (row ``b``'s logits past ``len(feeds[b])``: dummies).

        Every fed token's K/V is written (the caller rolls rejected ones back with
        ``BlockManager.truncate``); blocks must hold ``seq.length + len(feed)`` positions."""
        saved = [list(s.lengths) for s in seqs]
        T = max(len(f) for f in feeds)
        cache = RaggedPagedCache(self.pool, seqs, n_real=[len(f) for f in feeds])
        x = torch.tensor([list(f) + [f[-1]] * (T - len(f)) for f in feeds], dtype=torch.long, device=self.device)
        try:
            return self.model(x, attention_mask=cache.attention_mask(T), past_key_values=cache, use_cache=True).logits
        except Exception:
            for s, n in zip(seqs, saved, strict=True):
                s.lengths[:] = n
            raise
