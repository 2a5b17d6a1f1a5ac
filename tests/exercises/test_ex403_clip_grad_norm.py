"""Grader for exercises/ex403_clip_grad_norm.py against torch.nn.utils.clip_grad_norm_.
Tolerance: rtol 1e-5 (fp32; the only difference is the order of the sum of squares)."""

import pytest
import torch

EX = "ex403_clip_grad_norm"


def model_with_grads(scale, seed=0, frozen=True):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    unused = torch.nn.Linear(3, 3)  # in the parameter list, never gets a gradient
    (m(torch.randn(4, 5)) * scale).sum().backward()
    params = list(m.parameters()) + list(unused.parameters())
    return params


@pytest.mark.parametrize("scale,max_norm", [(100.0, 1.0), (0.01, 1.0), (5.0, 0.5), (1.0, 1e9)])
def test_matches_torch(impl, scale, max_norm):
    ours, ref = model_with_grads(scale), model_with_grads(scale)
    got = impl(EX).clip_grad_norm(iter(ours), max_norm)  # a generator, like model.parameters()
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert isinstance(got, torch.Tensor) and got.dim() == 0, f"应返回 0 维张量，实际 {got!r}"
    assert torch.allclose(got, want, rtol=1e-5), f"返回的范数应为裁剪前的 {want.item():.6g}，实际 {got.item():.6g}"
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if b.grad is None:
            assert a.grad is None, f"参数 {i} 原本没有梯度，不应凭空创建梯度"
            continue
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8), (
            f"参数 {i} 裁剪后的梯度与 torch.nn.utils.clip_grad_norm_ 不一致（max_norm={max_norm}, scale={scale}）"
        )


def test_no_grads_returns_zero(impl):
    ps = [torch.nn.Parameter(torch.ones(3))]
    got = impl(EX).clip_grad_norm(ps, 1.0)
    assert float(got) == 0.0, f"没有任何梯度时应返回 0，实际 {got!r}"


def test_norm_after_clipping_is_max_norm(impl):
    ps = model_with_grads(1000.0)
    impl(EX).clip_grad_norm(ps, 2.0)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps if p.grad is not None]))
    assert after.item() == pytest.approx(2.0, rel=1e-4), f"裁剪后全局范数应约为 max_norm=2.0，实际 {after.item():.6g}"
