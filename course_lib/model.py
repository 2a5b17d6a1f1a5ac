"""DIYModel: a small decoder-only transformer in the Llama style.

RMSNorm, rotary position embeddings (RoPE), SwiGLU feed-forward, optional grouped-query
attention (GQA), and ``F.scaled_dot_product_attention``. The forward takes the same inputs as a
Hugging Face causal LM: ``attention_mask`` (1 = real token, 0 = padding), ``position_ids``,
``past_key_values`` (a cache from ``kv_cache``) and ``use_cache``.

Activation checkpointing (``model.set_activation_checkpointing(True)``, lesson 4.0.5) wraps each
block in ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` while training: the
forward keeps only each block's input, and the backward runs the block's forward again to get
the rest (torchtitan's per-block "full" AC). It is a runtime switch, not a config field: it
changes neither the parameters, the state-dict keys nor the exported config.

Parameter names follow HF's ``LlamaForCausalLM`` (``q_proj``, ``gate_proj``, ``input_layernorm``,
...) and RoPE uses HF's rotate-half layout, so exporting to the HF format (lesson 4.2.1) is a
plain renaming of the top-level prefixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .kv_cache import Cache, DynamicCache


def _sdpa_has_gqa() -> bool:
    """torch >= 2.5 lets SDPA read grouped K/V heads directly (``enable_gqa=True``)."""
    try:
        F.scaled_dot_product_attention(
            torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), enable_gqa=True
        )
        return True
    except (TypeError, RuntimeError):
        return False


# Checked once at import. Without it, K/V are repeated per query head on every call (a copy of the
# whole cache per decode step: the cost this flag removes).
SDPA_GQA = _sdpa_has_gqa()


@dataclass
class ModelOutput:
    logits: Tensor
    loss: Tensor | None = None
    past_key_values: Cache | None = None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back.

    Doing the reduction in fp32 matters under bf16/fp16 autocast: the mean of squares of a
    wide vector loses precision quickly in 16-bit formats.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(dtype)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (max_seq_len, head_dim), rotate-half layout (as in HF Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    t = torch.arange(max_seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D) already gathered at the tokens' positions."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def build_attention_mask(
    attention_mask: Tensor | None, q_len: int, past_len: int, k_len: int, device: torch.device
) -> Tensor | None:
    """Boolean mask (B or 1, 1, q_len, k_len); True = may attend.

    Query i sits at cache position ``past_len + i`` and may see keys ``j <= past_len + i``
    (causal) that are not padding. Rows that can see nothing at all (a padding token at the
    very left of a left-padded sequence) are opened fully: their output is never used, and an
    all-False row would make softmax produce NaN.
    """
    q_pos = torch.arange(past_len, past_len + q_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, q, k)
    if attention_mask is not None:
        am = attention_mask.to(device=device, dtype=torch.bool)
        if am.shape[1] < k_len:  # e.g. a preallocated cache longer than the tokens seen so far
            am = F.pad(am, (0, k_len - am.shape[1]), value=True)
        mask = mask & am[:, None, None, :k_len]
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


def document_positions(document_ids: Tensor) -> Tensor:
    """Positions that restart at 0 where each document begins (documents are contiguous runs of one id)."""
    B, T = document_ids.shape
    idx = torch.arange(T, device=document_ids.device).expand(B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=-1).values


def document_attention_mask(document_ids: Tensor) -> Tensor:
    """Block-diagonal causal mask (B, 1, T, T), True = may attend: token i sees token j <= i of its own
    document only. Packing several conversations in one row then computes exactly what one row per
    conversation would (tests/unit/test_sft.py)."""
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]
    return (same & causal)[:, None]


def position_ids_from_mask(attention_mask: Tensor, q_len: int) -> Tensor:
    """Positions counted over real tokens only: left padding does not shift the positions."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.clamp(min=0)
    return pos[:, -q_len:]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: Cache | None, is_causal: bool
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # The cache keeps the un-repeated kv heads: GQA's memory saving is in the cache.
            k, v = cache.update(self.layer_idx, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if gqa and not SDPA_GQA:  # older torch: copy each kv head for its group of query heads
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        extra = {"enable_gqa": True} if gqa and SDPA_GQA else {}
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            **extra,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, is_causal):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, is_causal)
        return x + self.mlp(self.post_attention_layernorm(x))


class DIYModel(nn.Module):
    """Decoder-only language model. ``forward(input_ids, targets=...)`` returns logits and loss.

    ``targets`` are already aligned with the inputs (``targets[:, t]`` is the token that should
    follow ``input_ids[:, t]``), nanoGPT style; positions with ``-100`` are ignored in the loss.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not persistent: derived from the config, so they are never stored in checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        self.reset_parameters()

    def set_activation_checkpointing(self, enabled: bool = True) -> DIYModel:
        """Recompute each block's activations in the backward instead of keeping them.

        Applies only to training forwards (``model.train()``, autograd on, no KV cache); eval,
        ``torch.no_grad()`` and cached generation run the blocks as usual. A plain attribute, not
        a parameter or buffer: the state dict and the exported config do not change."""
        self.activation_checkpointing = bool(enabled)
        return self

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 / nanoGPT: residual output projections scaled by 1/sqrt(2 * n_layers).
                s = (
                    std / math.sqrt(2 * self.config.n_layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else std
                )
                nn.init.normal_(p, mean=0.0, std=s)
            else:
                nn.init.ones_(p)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_embeddings and name.startswith("embed_tokens"):
                continue
            total += p.numel()
        return total

    def _check_positions(self, position_ids: Tensor, width: int, derived: bool) -> None:
        """Positions must index the RoPE tables. Derived positions never exceed ``width - 1``
        (past + new tokens, padding included), so the usual case is checked on the host with no
        device read: ``int(position_ids.max())`` would stall every decode step until the GPU
        catches up (and break a torch.compile graph). Only caller-given positions, or a padded
        width beyond the window, pay for that read."""
        limit = self.config.max_seq_len
        if derived and width <= limit:
            return
        top = int(position_ids.max())  # a device -> host sync, off the hot path (see above)
        if top >= limit:
            raise ValueError(
                f"position {top} is beyond max_seq_len={limit}; "
                "use a shorter context or a model config with a larger max_seq_len"
            )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        targets: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> ModelOutput:
        """``document_ids`` (B, T), for packed training rows: tokens attend only within their own
        document (a contiguous run of one id) and positions restart at 0 in each (unless
        ``position_ids`` are given). No cache, no attention_mask with it."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if document_ids is not None:
            return self._forward_packed(
                input_ids, document_ids, position_ids, past_key_values, use_cache, attention_mask, targets
            )
        legacy = isinstance(past_key_values, (tuple, list))
        cache = DynamicCache.from_legacy(past_key_values) if legacy else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache is not None and cache.tensor_positions:
            return self._forward_tensor_positions(input_ids, attention_mask, position_ids, cache, use_cache, targets)
        past_len = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape != (B, past_len + T):
            raise ValueError(
                f"attention_mask must cover past + new tokens: expected shape {(B, past_len + T)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        explicit_positions = position_ids
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_mask(attention_mask, T)
            else:
                position_ids = torch.arange(past_len, past_len + T, device=input_ids.device).expand(B, T)
        self._check_positions(position_ids, past_len + T, derived=explicit_positions is None)
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]

        # A plain causal forward (training) takes SDPA's fast is_causal path with no mask tensor.
        # A cache may hand back more key slots than tokens seen (a preallocated static cache):
        # it says how many via attended_length(), and the causal mask hides the unused ones.
        # One new token with no padding and no unused slots sees every key: no mask at all (an
        # all-True mask would be built, read and broadcast on every decode step for nothing).
        k_len = cache.attended_length(T) if cache is not None else T
        simple = attention_mask is None and past_len == 0 and k_len == T
        sees_all = attention_mask is None and T == 1 and k_len == past_len + 1
        mask = (
            None if (simple or sees_all) else build_attention_mask(attention_mask, T, past_len, k_len, input_ids.device)
        )

        return self._finish(input_ids, cos, sin, mask, cache, simple, use_cache, targets, legacy)

    def _forward_packed(
        self, input_ids, document_ids, position_ids, past_key_values, use_cache, attention_mask, targets
    ) -> ModelOutput:
        """Several documents per row (SFT packing): a block-diagonal causal mask, positions per document."""
        if past_key_values is not None or use_cache or attention_mask is not None:
            raise ValueError(
                "document_ids is for packed training forwards: pass no KV cache, use_cache or attention_mask with it"
            )
        if document_ids.shape != input_ids.shape:
            raise ValueError(
                f"document_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(document_ids.shape)}"
            )
        derived = position_ids is None
        if derived:
            position_ids = document_positions(document_ids)
        self._check_positions(position_ids, input_ids.shape[1], derived=derived)
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        mask = document_attention_mask(document_ids)
        return self._finish(input_ids, cos, sin, mask, None, False, False, targets, False)

    def _forward_tensor_positions(self, input_ids, attention_mask, position_ids, cache, use_cache, targets):
        """The compiled decode path (gpt-fast's): the positions come from ``cache.position()``, a
        tensor, and the mask is built from them over the whole fixed-size cache. No Python number
        here changes from step to step and nothing reads a value back from the device, so
        ``torch.compile`` traces one graph for every position. The caller checks room on the host
        (``TensorPositionCache.advance``)."""
        if attention_mask is not None or position_ids is not None:
            raise ValueError(
                "a TensorPositionCache takes no attention_mask / position_ids: its rows are unpadded "
                "and positions are the cache slots; use a StaticCache or DynamicCache for padded batches"
            )
        B, T = input_ids.shape
        pos = cache.position() + torch.arange(T, device=input_ids.device)  # (T,)
        cos, sin = self.rope_cos[pos].expand(B, T, -1), self.rope_sin[pos].expand(B, T, -1)
        k_pos = torch.arange(cache.max_len, device=input_ids.device)
        mask = (k_pos[None, :] <= pos[:, None])[None, None]  # (1, 1, T, max_len): causal, unwritten slots hidden
        return self._finish(input_ids, cos, sin, mask, cache, False, use_cache, targets, False)

    def _finish(self, input_ids, cos, sin, mask, cache, simple, use_cache, targets, legacy) -> ModelOutput:
        x = self.embed_tokens(input_ids)
        recompute = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                # Only x (and the shared cos/sin/mask) is kept for the backward; the block's own
                # activations are recomputed then. use_reentrant=False: the variant PyTorch
                # recommends (works with inputs that need no grad and with torch.autograd.grad).
                x = checkpoint(layer, x, cos, sin, mask, None, simple, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, simple)
        x = self.norm(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        out_cache = cache if use_cache else None
        if legacy and out_cache is not None:
            out_cache = out_cache.to_legacy()
        return ModelOutput(logits=logits, loss=loss, past_key_values=out_cache)
