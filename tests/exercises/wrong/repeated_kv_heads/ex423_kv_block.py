"""WRONG on purpose (tests/test_grader_strength.py): caches K/V after repeating them to all query heads (GQA memory lost)."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TinyConfig:
    vocab_size: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention (GQA): 2 key/value heads for 4 query heads
    n_layers: int = 2
    max_seq_len: int = 64

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * D, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * D, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * D, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * D, cfg.d_model, bias=False)

    def forward(self, x: Tensor, past_kv=None, use_cache: bool = False):
        B, T, _ = x.shape
        H, KV, D = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
        past_len = 0  # NEW
        if past_kv is not None:  # NEW
            past_len = past_kv[0].shape[2]  # NEW
            k = torch.cat([past_kv[0], k.repeat_interleave(H // KV, dim=1)], dim=2)
            v = torch.cat([past_kv[1], v.repeat_interleave(H // KV, dim=1)], dim=2)
        if past_kv is None:
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
        new_kv = (k, v) if use_cache else None
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, past_len + T)
        q_pos = torch.arange(past_len, past_len + T)[:, None]  # NEW: queries sit after the past
        k_pos = torch.arange(past_len + T)[None, :]  # NEW
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))  # causal
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(out), new_kv  # NEW: also the cache


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: Tensor, past_kv=None, use_cache: bool = False):
        a, new_kv = self.attn(self.norm1(x), past_kv, use_cache)  # NEW: pass the cache through
        x = x + a
        return x + self.mlp(self.norm2(x)), new_kv


class TinyLM(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)  # learned absolute positions
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, input_ids: Tensor, past_key_values=None, use_cache: bool = False):
        T = input_ids.shape[1]
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0  # NEW
        pos = torch.arange(past_len, past_len + T)  # NEW: offset
        x = self.tok_emb(input_ids) + self.pos_emb(pos)[None]
        new_cache = [] if use_cache else None  # NEW
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values else None  # NEW
            x, kv = block(x, past, use_cache)  # NEW
            if use_cache:  # NEW
                new_cache.append(kv)  # NEW
        return self.head(self.norm(x)), new_cache
