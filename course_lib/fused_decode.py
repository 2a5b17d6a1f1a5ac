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
with stale weights. A weight-only quantized model (``quantize.Int8Linear`` / ``Int4Linear``,
one scale per output row or per row group) is stacked the same way: the int8 rows (or packed int4
rows) and their scales are concatenated, which is exact because every output row keeps its own
scales, and the stacked module runs the same kernel once instead of three or two times; the other
modules (embedding, o/down projections, tied head) are called as they are.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .kv_cache import StaticCache
from .model import SDPA_GQA, DIYModel, rotate_half
from .quantize import Int4Linear, Int8Linear

_STACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parts(model: DIYModel) -> list[list[nn.Module]]:
    return [
        [b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj, b.mlp.gate_proj, b.mlp.up_proj]
        for b in model.layers
    ]


def _stored(mod: nn.Module) -> Tensor:
    """The tensor a projection's output is computed from (its version counter keys the stack)."""
    return mod.weight if type(mod) is nn.Linear else mod.qweight


def _stack(mods: list[nn.Module]) -> Tensor | nn.Module:
    """One projection for several with the same input: a weight ``(out, in)`` (on CPU ``(in, out)``,
    where ``x @ W_t`` is the faster GEMV for these wide matrices: 1 thread, cache-cold, 2752 x 512
    at 22.7 GB/s vs 14.9 as ``(out, in)``; 768 x 512 16.2 vs 14.3), or a quantized module whose
    rows are the parts' rows, scales included."""
    first = mods[0]
    if type(first) is nn.Linear:
        w = torch.cat([m.weight for m in mods])
        return w.t().contiguous() if w.device.type == "cpu" else w
    out = sum(m.out_features for m in mods)
    if type(first) is Int8Linear:
        st = Int8Linear(first.in_features, out)
        st.qweight, st.scale = torch.cat([m.qweight for m in mods]), torch.cat([m.scale for m in mods])
    else:  # Int4Linear (checked in for_model)
        st = Int4Linear(first.in_features, out, first.group_size)
        st.qweight, st.scales = torch.cat([m.qweight for m in mods]), torch.cat([m.scales for m in mods])
    st.convert_for_runtime(kernel=first.kernel)
    return st


@torch.no_grad()
def stacked_weights(model: DIYModel) -> tuple[list, list]:
    """Per layer the stacked q/k/v projection and the stacked gate/up one (``_stack``), kept with
    the model between calls and rebuilt when any of those weights changed: the key is each
    tensor's identity and its version counter, which every in-place write bumps
    (``optimizer.step()``, ``load_state_dict``, ``copy_``), and a quantized layer's kernel switch."""
    parts = _parts(model)
    key = tuple((id(_stored(m)), _stored(m)._version, getattr(m, "kernel", None)) for ms in parts for m in ms)
    hit = _STACKED.get(model)
    if hit is None or hit[0] != key:
        qkv = [_stack(ms[:3]) for ms in parts]
        gate_up = [_stack(ms[3:]) for ms in parts]
        _STACKED[model] = hit = (key, qkv, gate_up)
    return hit[1], hit[2]


class FusedDecodeCache(StaticCache):
    """A ``StaticCache`` that also holds each layer's stacked weights and decodes one token per row."""

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, **kw) -> FusedDecodeCache:
        if not isinstance(model, DIYModel):
            raise ValueError(f"cache='fused' needs a course_lib DIYModel, got {type(model).__name__}")
        for i, ms in enumerate(_parts(model)):
            for mod in ms:
                plain = type(mod) is nn.Linear and mod.bias is None
                if not (plain or type(mod) in (Int8Linear, Int4Linear)) or type(mod) is not type(ms[0]):
                    raise ValueError(
                        f"cache='fused' stacks bias-free nn.Linear, Int8Linear or Int4Linear projections of one "
                        f"kind per layer; layer {i} has {type(mod).__name__}: use cache='static' for this model"
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


def _matmul(x: Tensor, w: Tensor | nn.Module) -> Tensor:
    """The stacked projection of ``x``: a quantized module, or ``x @ W.T`` for a weight kept as
    ``W`` (out, in) or, on CPU, as ``W.T`` (in, out)."""
    if isinstance(w, nn.Module):
        return w(x)
    return x @ w if w.device.type == "cpu" else F.linear(x, w)
