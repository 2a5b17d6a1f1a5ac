"""Reference solution for exercises/ex406_roofline_counts.py."""

from course_lib.config import ModelConfig


def _matrices(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    attn = 2 * d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd  # q, o; k, v
    mlp = 3 * d * cfg.ffn_hidden  # gate, up, down
    return cfg.n_layers * (attn + mlp) + cfg.vocab_size * d  # + the output head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    norms = (2 * cfg.n_layers + 1) * cfg.d_model
    n = _matrices(cfg) + norms  # the embedding table counted once
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def decode_bytes_per_step(cfg: ModelConfig, context: int, batch: int = 1, dtype_bytes: int = 4) -> int:
    weights = _matrices(cfg) + (2 * cfg.n_layers + 1) * cfg.d_model
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * context * batch
    return (weights + kv) * dtype_bytes
