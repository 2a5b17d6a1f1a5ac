"""Two models that are not DIYModel, for tests/unit/test_protocol.py (and ``--model-class``):

* ``tiny_llama(**kw)``: a Hugging Face ``LlamaForCausalLM`` with a tiny config (adapted by
  ``course_lib.protocol.HFCausalLM``);
* ``NanoGPT``: a nanoGPT-style GPT (learned positions, LayerNorm, GELU MLP, multi-head attention)
  written to the course's protocol directly, KV cache included: its attention calls
  ``cache.update(layer, k, v)``, so it also runs in the engine's paged cache.

Importable as ``foreign_models`` with tests/unit on PYTHONPATH:
``python -m course_lib.train --model-class foreign_models:NanoGPT --model-kwargs '{"n_layer": 2}'``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kv_cache import DynamicCache
from course_lib.model import ModelOutput, build_attention_mask, position_ids_from_mask


def tiny_llama(vocab_size: int = 258, hidden_size: int = 32, layers: int = 2, max_len: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


@dataclass
class GPTConfig:
    vocab_size: int = 258
    max_seq_len: int = 64  # nanoGPT's block_size
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32

    # the names the course's caches read (preallocated / paged caches size themselves from these)
    @property
    def n_layers(self) -> int:
        return self.n_layer

    @property
    def n_kv_heads(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head, self.layer_idx = cfg.n_head, layer_idx

    def forward(self, x, mask, cache):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # the course's KV-cache convention: update returns all keys so far
            k, v = cache.update(self.layer_idx, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )

    def forward(self, x, mask, cache):
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT, with forward in the course's protocol (course_lib/protocol.py)."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.config = cfg = GPTConfig(**kw)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in nanoGPT
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=False,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        B, T = input_ids.shape
        cache = past_key_values if past_key_values is not None else (DynamicCache() if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (
                position_ids_from_mask(attention_mask, T)
                if attention_mask is not None
                else torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            )
        # keys the cache will hand back (a preallocated cache may return unused slots: masked)
        k_len = cache.attended_length(T) if cache is not None else T
        simple = attention_mask is None and past == 0 and k_len == T  # SDPA's is_causal path
        mask = None if simple else build_attention_mask(attention_mask, T, past, k_len, input_ids.device)
        x = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            x = block(x, mask, cache)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, past_key_values=cache if use_cache else None)
