"""A decode step with fewer, larger kernels (lesson 4.0.6, "where the time goes").

Batch-1 decode of a small model is not all matmul: in ``DIYModel.forward`` each layer runs three
projections for q, k and v, two for gate and up, and a few dozen small ops (views, transposes,
masks, the cache bookkeeping) whose fixed cost per call adds up to about a fifth of a step on a CPU
(bench/decode_kernels.py and the lesson's profile). ``FusedDecodeCache`` keeps the model's KV in a
``StaticCache`` and runs each decode step itself:

* q, k and v come from ONE matmul against the three weights stacked (``W_qkv``), gate and up from
  one against ``W_gate_up``: fewer launches, and larger matrices read closer to the memory roof;
* on CPU the stacked weights are stored transposed, ``(in, out)``: for these wide matrices
  ``x @ W_t`` reads memory faster than ``F.linear`` (measured in the comment of ``stacked_weights``;
  ``F.rms_norm`` was tried and is slower here than the module's few ops);
* the rest is the model's own arithmetic (its RMSNorm modules, ``rotate_half`` RoPE at the one
  position being decoded, SDPA over the cached keys), so the logits equal the model's within float
  rounding and the tokens are the same (tests/unit/test_fused_decode.py);
* no attention mask, no position tensors: every row sits at the same position, so the prompts must
  be unpadded (``generate(..., cache="fused")`` checks that once, at the prefill).

The prefill still goes through ``model.forward`` (it fills the static buffers). The stacked
weights are a copy (about 70% of the model's bytes more memory), kept with the model and rebuilt
when a weight changed (``stacked_weights``), so a model trained between two calls is never decoded
with stale weights. Only
plain ``nn.Linear`` float weights are stacked: a quantized model (``quantize.Int8Linear``, ...)
keeps its own kernels and decodes with the reference path.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .kv_cache import StaticCache
from .model import SDPA_GQA, DIYModel, rotate_half

_STACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parts(model: DIYModel) -> list[list[Tensor]]:
    return [
        [b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight, b.mlp.gate_proj.weight]
        + [b.mlp.up_proj.weight]
        for b in model.layers
    ]


@torch.no_grad()
def stacked_weights(model: DIYModel) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer ``W_qkv`` (q, k, v stacked) and ``W_gate_up``, kept with the model between calls and
    rebuilt when any of those weights changed: the key is each tensor's identity and its version
    counter, which every in-place write bumps (``optimizer.step()``, ``load_state_dict``, ``copy_``)."""
    parts = _parts(model)
    key = tuple((id(w), w._version) for ws in parts for w in ws)
    hit = _STACKED.get(model)
    if hit is None or hit[0] != key:
        # stored (in, out) on CPU, where x @ W_t is the faster GEMV for these wide matrices
        # (1 thread, cache-cold: 2752 x 512 at 22.7 GB/s vs 14.9 as (out, in); 768 x 512 16.2 vs 14.3)
        t = (lambda w: w.t().contiguous()) if parts[0][0].device.type == "cpu" else (lambda w: w)
        qkv = [t(torch.cat(ws[:3])) for ws in parts]
        gate_up = [t(torch.cat(ws[3:])) for ws in parts]
        _STACKED[model] = hit = (key, qkv, gate_up)
    return hit[1], hit[2]


class FusedDecodeCache(StaticCache):
    """A ``StaticCache`` that also holds each layer's stacked weights and decodes one token per row."""

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, **kw) -> FusedDecodeCache:
        if not isinstance(model, DIYModel):
            raise ValueError(f"cache='fused' needs a course_lib DIYModel, got {type(model).__name__}")
        for name, mod in model.named_modules():
            if name.endswith(("_proj", "lm_head")) and not (type(mod) is nn.Linear and mod.bias is None):
                raise ValueError(
                    f"cache='fused' stacks plain nn.Linear weights; {name} is {type(mod).__name__}: "
                    "use cache='static' for a quantized model"
                )
        cache = super().for_model(model, batch_size, max_len, **kw)
        cache.w_qkv, cache.w_gate_up = stacked_weights(model)
        return cache

    @torch.no_grad()
    def decode(self, model: DIYModel, next_ids: Tensor) -> Tensor:
        """Logits ``(B, vocab)`` for one new token per row (``next_ids``: ``(B,)``), written into the cache."""
        cfg = model.config
        H, Hk, D, ffn = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden
        B, p = next_ids.shape[0], self.lengths[0]
        if p + 1 > self.max_len:
            raise ValueError(f"FusedDecodeCache is full: {p} cached + 1 > max_len={self.max_len}")
        if p >= cfg.max_seq_len:
            raise ValueError(f"position {p} is beyond max_seq_len={cfg.max_seq_len}; use a shorter context")
        x = model.embed_tokens(next_ids)  # (B, d)
        cos, sin = model.rope_cos[p].to(x.dtype), model.rope_sin[p].to(x.dtype)  # (D,)
        gqa = {"enable_gqa": True} if SDPA_GQA and Hk != H else {}
        for i, block in enumerate(model.layers):
            qkv = _matmul(block.input_layernorm(x), self.w_qkv[i])
            q = qkv[:, : H * D].view(B, H, D)
            k = qkv[:, H * D : (H + Hk) * D].view(B, Hk, D)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            self.keys[i][:, :, p] = k
            self.values[i][:, :, p] = qkv[:, (H + Hk) * D :].view(B, Hk, D)
            keys, values = self.keys[i][:, :, : p + 1], self.values[i][:, :, : p + 1]
            if Hk != H and not SDPA_GQA:
                keys, values = keys.repeat_interleave(H // Hk, 1), values.repeat_interleave(H // Hk, 1)
            y = F.scaled_dot_product_attention(q[:, :, None], keys, values, **gqa)
            x = x + block.self_attn.o_proj(y.reshape(B, H * D))
            gu = _matmul(block.post_attention_layernorm(x), self.w_gate_up[i])
            x = x + block.mlp.down_proj(F.silu(gu[:, :ffn]) * gu[:, ffn:])
        self.lengths = [p + 1] * len(self.lengths)
        return model.lm_head(model.norm(x))


def _matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ W.T`` for a stacked weight kept as ``W`` (out, in) or, on CPU, as ``W.T`` (in, out)."""
    return x @ w if w.device.type == "cpu" else F.linear(x, w)
