"""练习 ex423（进阶）：把 KV 缓存 (KV cache) 接进一个小模型（含 GQA）。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.2.3")` 检查；卡住时
`from course_lib.lab.hints import hint; hint("ex423_kv_block")`，每调用一次多给一层提示。

下面是一个 **能用但没有缓存** 的小模型：每生成一个 token 都要把整段序列重新算一遍。
你要改 `Attention.forward` 和 `TinyLM.forward`（`Block.forward` 已经把缓存传下去了），
让它们支持 `past_key_values` / `use_cache`。改动的行请在行尾标 `# NEW`（Raschka 的写法：
这几行 diff 就是这一课）。

约定 (contract)：
- `TinyLM.forward(input_ids, past_key_values=None, use_cache=False)` 返回 `(logits, cache)`：
  `logits` 形状 (B, T, vocab)，只对应这次传入的 T 个新 token；`use_cache=False` 时 `cache` 为 None。
- `cache` 是长度为 n_layers 的 list，第 i 项是该层的 `(k, v)`，形状都是
  (B, n_kv_heads, 已见过的 token 总数, head_dim)：缓存的是 **KV 头**（GQA 时比查询头少），
  按时间顺序排列。把它作为下一次调用的 `past_key_values` 传回来。
- 有缓存时，这次的 T 个 token 的位置是 past_len, past_len+1, …（位置编码要加偏移），
  第 i 个新 token 能看到全部旧 token 和新 token 中的 0..i（因果掩码也要加偏移）。T 可以大于 1
  （分块 prefill）。
- 等价性：对任意切分，`forward(ids[:, :a], use_cache=True)` 再
  `forward(ids[:, a:], past_key_values=cache)` 的 logits 与 `forward(ids)` 的最后 T-a 个位置
  一致（float32 误差 1e-5 内）。

例子：B=1、prompt 5 个 token，prefill 后 cache 里每层 k 的形状是 (1, 2, 5, 8)；再喂 1 个 token，
变成 (1, 2, 6, 8)，这次的 logits 形状 (1, 1, 64)；整个缓存的字节数 =
2 × n_layers × B × n_kv_heads × 6 × head_dim × 4（float32）= 2×2×1×2×6×8×4 = 1536。
"""

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
        if past_kv is not None or use_cache:
            raise NotImplementedError("请在 Attention.forward 里支持 past_kv / use_cache")
        B, T, _ = x.shape
        H, KV, D = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
        k = k.repeat_interleave(H // KV, dim=1)  # GQA: share each KV head
        v = v.repeat_interleave(H // KV, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal
        scores = scores.masked_fill(causal, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(out), None


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
        a, new_kv = self.attn(self.norm1(x), past_kv, use_cache)  # passes the cache through
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
        if past_key_values is not None or use_cache:
            raise NotImplementedError("请在 TinyLM.forward 里支持 past_key_values / use_cache")
        T = input_ids.shape[1]
        pos = torch.arange(T)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)[None]
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x)), None
