"""Grader for exercises/ex406_roofline_counts.py. Oracle: course_lib.roofline (whose counts are
checked against hand-computed values and against torch's FlopCounterMode in
tests/unit/test_roofline.py). Exact integers: no tolerance needed."""

import pytest

from course_lib import roofline
from course_lib.config import ModelConfig

EX = "ex406_roofline_counts"
CONFIGS = {
    "tiny": ModelConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=16, max_seq_len=32),
    "gqa": ModelConfig(d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, ffn_hidden=176, max_seq_len=128),
    "untied": ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=96, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seq_len", [16, 256])
def test_flops_per_token(impl, name, seq_len):
    cfg = CONFIGS[name]
    want = roofline.flops_per_token(cfg, seq_len)
    got = impl(EX).flops_per_token(cfg, seq_len)
    dense = 6 * (roofline.num_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model))
    assert got == want, (
        f"配置 {name}，seq_len={seq_len}：应为 {want} FLOPs/token（其中 6N = {dense}，注意力 12·L·H·Q·T = "
        f"{want - dense}），你的结果 {got}。"
        + (" 看起来少了注意力那一项 12·L·H·Q·T。" if got == dense else "")
        + " 提示：embedding 表只算一次；H 是 query 头数。"
    )


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("context,batch,dtype_bytes", [(16, 1, 4), (100, 8, 4), (64, 3, 2)])
def test_decode_bytes_per_step(impl, name, context, batch, dtype_bytes):
    cfg = CONFIGS[name]
    want = roofline.decode_bytes_per_step(cfg, context, batch, weight_bits=8 * dtype_bytes, kv_bytes=dtype_bytes)
    got = impl(EX).decode_bytes_per_step(cfg, context, batch, dtype_bytes)
    weights = roofline.weight_bytes(cfg, 8 * dtype_bytes)
    kv = want - weights
    hint = ""
    if got == weights:
        hint = " 看起来少了 KV cache 的读取：每行每层读 K 和 V 各 context 个位置。"
    elif got == weights + kv * cfg.n_heads // cfg.n_kv_heads:
        hint = " 看起来按 query 头数 n_heads 算了 KV：cache 里只存 n_kv_heads 个头 (GQA)。"
    assert got == want, (
        f"配置 {name}，context={context}，batch={batch}，每个数 {dtype_bytes} 字节：应读 {want} 字节"
        f"（权重 {weights}，KV {kv}），你的结果 {got}。{hint}"
    )
