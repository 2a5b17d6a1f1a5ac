"""Grader for ex423: one cached attention step == full causal attention (oracle: SDPA, is_causal)."""

import pytest
import torch
import torch.nn.functional as F

EX = "ex423_kv_attention_step"


def _seq(B=2, H=3, T=9, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g) for _ in range(3)]


@pytest.mark.parametrize("T", [1, 5, 9])
def test_decode_steps_match_full_causal_attention(impl, T):
    q, k, v = _seq(T=T)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    f = impl(EX).attend_with_cache
    kc, vc = k[:, :, :0], v[:, :, :0]
    for t in range(T):
        out, kc, vc = f(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], kc, vc)
        assert tuple(out.shape) == (2, 3, 1, 16), f"out 形状应为 (2, 3, 1, 16)，实际 {tuple(out.shape)}"
        assert tuple(kc.shape) == (2, 3, t + 1, 16), f"第 {t} 步后缓存长度应为 {t + 1}，实际形状 {tuple(kc.shape)}"
        # fp32, same math, different summation order -> 1e-5
        err = (out - full[:, :, t : t + 1]).abs().max().item()
        assert err < 1e-5, f"第 {t} 步的输出与完整因果注意力不一致：最大误差 {err:.3g}（允许 1e-5）"


def test_cache_contents_in_order(impl):
    q, k, v = _seq(T=4)
    _out, kc, vc = impl(EX).attend_with_cache(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], k[:, :, :3], v[:, :, :3])
    assert torch.equal(kc, k) and torch.equal(vc, v), "新的 key/value 应接在缓存末尾（沿 dim=2）"
