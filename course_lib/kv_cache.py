"""Key/value caches for autoregressive decoding.

A cache stores, per layer, the keys and values of every token already processed, so that a
decode step only computes K/V for the new token(s). The model talks to any cache through two
methods (the same protocol HF transformers uses):

* ``update(layer_idx, k, v) -> (k_all, v_all)``: append this step's ``k``/``v`` of shape
  ``(batch, kv_heads, new_tokens, head_dim)`` and return everything the attention should see;
* ``get_seq_length() -> int``: how many positions are already cached.

``generate`` also calls ``reorder(index)`` (drop finished rows) and the lessons read ``nbytes()``;
the ``Cache`` ABC requires all four.

``DynamicCache`` grows by concatenation (simple, allocates every step); ``StaticCache`` is
preallocated and written by position; ``QuantizedKVCache`` stores int8; ``PagedKVCache`` keeps
fixed-size blocks from a shared ``BlockPool`` (block table + free list).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .absmax import absmax_quantize
from .util import cdiv


class Cache(ABC):
    """The interface ``DIYModel`` and ``generate`` rely on; every cache implements all of it.

    ``update`` and ``get_seq_length`` are what attention needs; ``nbytes`` is what the memory
    lessons measure; ``reorder`` is what batched generation needs to drop finished rows. A
    cache that cannot honour one of them must still define it and raise, saying why.
    """

    @abstractmethod
    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add this step's keys/values for ``layer_idx``; return all keys/values to attend to."""

    @abstractmethod
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions already cached."""

    # A cache whose write position lives in a tensor (``position()``) rather than a Python int:
    # the model then reads no Python number that changes per step, so a compiled decode step
    # keeps one graph for every position (see ``TensorPositionCache``).
    tensor_positions = False

    def attended_length(self, new_tokens: int) -> int:
        """Length of the key axis ``update`` will return after adding ``new_tokens``."""
        return self.get_seq_length() + new_tokens

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of memory the cache holds (allocated or reserved for it)."""

    @abstractmethod
    def reorder(self, index: Tensor) -> None:
        """Keep only the batch rows in ``index`` (1-D, in the new order), e.g. to drop finished sequences."""


class DynamicCache(Cache):
    """Grows by ``torch.cat`` along the sequence axis: memory = exactly what is cached."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=2)
        else:
            raise IndexError(f"DynamicCache.update: layer {layer_idx} before layer {len(self.keys)}")
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def to_legacy(self) -> tuple[tuple[Tensor, Tensor], ...]:
        """The tuple-of-(k, v)-per-layer format older HF code passes around."""
        return tuple(zip(self.keys, self.values, strict=True))

    @classmethod
    def from_legacy(cls, past: Sequence[tuple[Tensor, Tensor]] | None) -> DynamicCache:
        cache = cls()
        for i, (k, v) in enumerate(past or ()):
            cache.update(i, k, v)
        return cache

    def reorder(self, index: Tensor) -> None:
        """Keep only / reorder batch rows (e.g. drop finished sequences)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


# --------------------------------------------------------------------------------------------
# Static (preallocated) cache
# --------------------------------------------------------------------------------------------
class StaticCache(Cache):
    """Preallocated ``(batch, kv_heads, max_len, head_dim)`` buffers per layer, written by position.

    No allocation after construction (what CUDA graphs / ``torch.compile`` want: fixed
    addresses). ``attend_full=False`` (default) hands the attention a *view* of the first
    ``length`` slots, so a decode step costs the same as with ``DynamicCache``.
    ``attend_full=True`` hands back the whole buffer every step, as HF's ``StaticCache`` does
    (fixed shapes), and reports that through ``attended_length``: the model's causal mask then
    hides the slots not yet written.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device=None,
        attend_full: bool = False,
    ) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = [0] * n_layers
        self.max_len = max_len
        self.attend_full = attend_full

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, **kw) -> StaticCache:
        c = model.config
        p = next(model.parameters())
        kw.setdefault("dtype", p.dtype if p.is_floating_point() else torch.float32)
        return cls(c.n_layers, batch_size, c.n_kv_heads, c.head_dim, max_len or c.max_seq_len, device=p.device, **kw)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, T = self.lengths[layer_idx], k.shape[2]
        if start + T > self.max_len:
            raise ValueError(
                f"StaticCache is full: {start} cached + {T} new tokens > max_len={self.max_len}; "
                "build the cache with a larger max_len"
            )
        if k.shape[0] != self.keys[layer_idx].shape[0]:
            raise ValueError(f"StaticCache was built for batch {self.keys[layer_idx].shape[0]}, got batch {k.shape[0]}")
        self.keys[layer_idx][:, :, start : start + T] = k
        self.values[layer_idx][:, :, start : start + T] = v
        self.lengths[layer_idx] = start + T
        end = self.max_len if self.attend_full else start + T
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def attended_length(self, new_tokens: int) -> int:
        return self.max_len if self.attend_full else self.get_seq_length() + new_tokens

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def reorder(self, index: Tensor) -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class TensorPositionCache(StaticCache):
    """A static cache for ``torch.compile`` (gpt-fast's ``KVCache``): fixed shapes, and the next
    write slot kept in a 0-d tensor ``pos`` instead of a Python int.

    ``update`` writes with ``index_copy_`` at ``pos + arange(T)`` and always returns the whole
    buffer; the model builds the causal mask from the same tensor positions, so the slots not yet
    written are hidden. Nothing in a step depends on a Python number that changes per token, so
    one compiled graph serves every position. The host still counts tokens in ``advance`` (called
    by the code that drives the steps, outside the compiled step) to refuse writing past
    ``max_len``. Rows cannot be padded (positions = slots) and cannot be dropped (fixed batch).
    """

    tensor_positions = True

    def __init__(self, *args, **kw) -> None:
        kw["attend_full"] = True
        super().__init__(*args, **kw)
        self.pos = torch.zeros((), dtype=torch.long, device=self.keys[0].device if self.keys else None)

    def position(self) -> Tensor:
        return self.pos

    def advance(self, new_tokens: int) -> None:
        """Host-side bookkeeping after a forward of ``new_tokens``: count, check room, move ``pos``."""
        n = self.lengths[0] + new_tokens
        if n > self.max_len:
            raise ValueError(
                f"TensorPositionCache is full: {n} tokens > max_len={self.max_len}; "
                "build the cache with a larger max_len"
            )
        self.lengths = [n] * len(self.lengths)
        self.pos += new_tokens

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        idx = self.pos + torch.arange(k.shape[2], device=k.device)
        self.keys[layer_idx].index_copy_(2, idx, k.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_copy_(2, idx, v.to(self.values[layer_idx].dtype))
        return self.keys[layer_idx], self.values[layer_idx]

    def reorder(self, index: Tensor) -> None:
        raise ValueError(
            "TensorPositionCache keeps a fixed batch (one compiled graph): finished rows stay in "
            "the batch; use generate(..., drop_finished=False)"
        )


# --------------------------------------------------------------------------------------------
# int8 quantized cache
# --------------------------------------------------------------------------------------------
class QuantizedKVCache(Cache):
    """Keys and values stored as int8 with one fp32 scale per token and head.

    The choice: *per token* for both K and V (scale over ``head_dim``). KIVI (Liu et al.,
    2024) quantizes keys *per channel* because a few key channels carry outliers; but a
    per-channel scale spans many tokens, so it needs tokens grouped into blocks and a
    full-precision residual for the newest ones. Per-token scales work one token at a time
    (a decode step just appends), and at 8 bits the error is already small (measured in
    lesson 4.2.3). Memory per token and head: ``head_dim`` bytes + 4 bytes of scale, instead
    of ``4 * head_dim`` (fp32). ``update`` returns dequantized tensors: the attention math is
    unchanged, only storage shrinks (a real kernel would read int8 directly).
    """

    def __init__(self) -> None:
        self.qk: list[Tensor] = []
        self.sk: list[Tensor] = []
        self.qv: list[Tensor] = []
        self.sv: list[Tensor] = []
        self.dtype = torch.float32

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.dtype = k.dtype
        qk, sk = absmax_quantize(k, 127, dim=-1)  # one scale per (batch, head, token)
        qv, sv = absmax_quantize(v, 127, dim=-1)
        if layer_idx == len(self.qk):
            self.qk.append(qk), self.sk.append(sk), self.qv.append(qv), self.sv.append(sv)
        elif layer_idx < len(self.qk):
            self.qk[layer_idx] = torch.cat([self.qk[layer_idx], qk], 2)
            self.sk[layer_idx] = torch.cat([self.sk[layer_idx], sk], 2)
            self.qv[layer_idx] = torch.cat([self.qv[layer_idx], qv], 2)
            self.sv[layer_idx] = torch.cat([self.sv[layer_idx], sv], 2)
        else:
            raise IndexError(f"QuantizedKVCache.update: layer {layer_idx} before layer {len(self.qk)}")
        kd = (self.qk[layer_idx].float() * self.sk[layer_idx]).to(k.dtype)
        vd = (self.qv[layer_idx].float() * self.sv[layer_idx]).to(v.dtype)
        return kd, vd

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.qk[layer_idx].shape[2] if layer_idx < len(self.qk) else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.qk + self.sk + self.qv + self.sv)

    def reorder(self, index: Tensor) -> None:
        for lst in (self.qk, self.sk, self.qv, self.sv):
            lst[:] = [t.index_select(0, index) for t in lst]


# --------------------------------------------------------------------------------------------
# Paged cache: fixed-size blocks from a shared pool
# --------------------------------------------------------------------------------------------
class BlockPool:
    """A pool of KV blocks shared by many sequences (the idea behind vLLM's PagedAttention).

    Storage per layer: ``(num_blocks, kv_heads, block_size, head_dim)`` for keys and values.
    A sequence owns a *block table* (a list of block ids); blocks come from a free list and go
    back to it when the sequence finishes, so memory is reserved in ``block_size`` steps
    instead of ``max_len`` per sequence.
    """

    def __init__(
        self,
        n_layers: int,
        num_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        shape = (num_blocks, n_kv_heads, block_size, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.block_size, self.num_blocks = block_size, num_blocks
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16) -> BlockPool:
        c, p = model.config, next(model.parameters())
        return cls(c.n_layers, num_blocks, block_size, c.n_kv_heads, c.head_dim, dtype=p.dtype, device=p.device)

    def allocate(self) -> int:
        if not self.free:
            raise RuntimeError(
                f"BlockPool out of blocks (all {self.num_blocks} in use); "
                "free finished sequences or build a pool with more blocks"
            )
        return self.free.pop()

    def release(self, blocks: Sequence[int]) -> None:
        self.free.extend(reversed(list(blocks)))

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers, keys and values."""
        t = self.k[0]
        return 2 * len(self.k) * t[0].numel() * t.element_size()

    def nbytes(self) -> int:
        return self.block_bytes * self.num_blocks

    def used_blocks(self) -> int:
        return self.num_blocks - len(self.free)


class PagedKVCache(Cache):
    """One batch of sequences whose keys/values live in ``BlockPool`` blocks.

    ``block_tables[b]`` lists the blocks of row ``b`` in order; token position ``p`` of row
    ``b`` is slot ``p % block_size`` of block ``block_tables[b][p // block_size]``. ``update``
    writes the new tokens into their slots, then gathers each row's blocks into a contiguous
    tensor for the attention (a fused kernel would read the blocks in place).
    """

    def __init__(self, pool: BlockPool, batch_size: int = 1) -> None:
        self.pool = pool
        self.block_tables: list[list[int]] = [[] for _ in range(batch_size)]
        self.lengths = [0] * len(pool.k)

    def _ensure_capacity(self, new_len: int) -> None:
        need = cdiv(new_len, self.pool.block_size)
        for table in self.block_tables:
            while len(table) < need:
                table.append(self.pool.allocate())

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        B, H, T, D = k.shape
        if B != len(self.block_tables):
            raise ValueError(f"PagedKVCache has {len(self.block_tables)} rows, got batch {B}")
        start = self.lengths[layer_idx]
        end = start + T
        self._ensure_capacity(end)  # allocation happens once (first layer); later layers find it done
        bs = self.pool.block_size
        pos = torch.arange(start, end, device=k.device)
        table = torch.tensor(self.block_tables, dtype=torch.long, device=k.device)  # (B, n_blocks)
        blk = table[:, pos // bs]  # (B, T)
        slot = (pos % bs).expand(B, T)
        kp, vp = self.pool.k[layer_idx], self.pool.v[layer_idx]
        # pool[blk, :, slot] <- k[b, :, t]
        kp[blk, :, slot] = k.permute(0, 2, 1, 3)
        vp[blk, :, slot] = v.permute(0, 2, 1, 3)
        self.lengths[layer_idx] = end
        # gather: (B, n_blocks, H, bs, D) -> (B, H, n_blocks*bs, D) -> first `end` slots
        n = cdiv(end, bs)
        kk = kp[table[:, :n]].permute(0, 2, 1, 3, 4).reshape(B, H, n * bs, D)[:, :, :end]
        vv = vp[table[:, :n]].permute(0, 2, 1, 3, 4).reshape(B, H, n * bs, D)[:, :, :end]
        return kk, vv

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def nbytes(self) -> int:
        """Bytes of the blocks this cache holds (reserved for it in the pool)."""
        return sum(len(t) for t in self.block_tables) * self.pool.block_bytes

    def reorder(self, index: Tensor) -> None:
        """Keep only the rows in ``index``; blocks of dropped rows go back to the pool at once."""
        keep = [int(i) for i in index]
        for i, table in enumerate(self.block_tables):
            if i not in keep:
                self.pool.release(table)
        self.block_tables = [self.block_tables[i] for i in keep]

    def free(self) -> None:
        """Give every block back to the pool (the sequence is finished)."""
        for table in self.block_tables:
            self.pool.release(table)
            table.clear()
        self.lengths = [0] * len(self.lengths)


def kv_cache_bytes_formula(
    n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int, bytes_per_value: int
) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x seq x batch x bytes."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value
