"""Grader for exercises/ex00_rmsnorm.py: RMSNorm against the trusted oracle
`torch.nn.functional.rms_norm` (torch >= 2.4)."""

import pytest
import torch
import torch.nn.functional as F

EX = "ex00_rmsnorm"

# (shape, dtype, atol, rtol)
# fp32: both sides compute in fp32; only summation order differs -> 1e-6 absolute is ample
#       for O(1) outputs (fp32 eps is 1.2e-7).
# bf16: the output is rounded to bf16 (8 significant bits, relative step 2**-8 = 0.0039), and
#       the oracle may round at a different point (before vs after the multiply by weight),
#       so results may differ by one or two bf16 steps -> rtol 1.6e-2 (torch's own bf16
#       default in assert_close), atol 1e-2 for values near zero.
# fp16: 11 significant bits (step 2**-11 ~ 4.9e-4) -> rtol 2e-3, atol 1e-3.
CASES = [
    ((4, 8), torch.float32, 1e-6, 1e-5),
    ((2, 5, 16), torch.float32, 1e-6, 1e-5),
    ((3, 7, 64), torch.float32, 1e-6, 1e-5),
    ((1, 1, 1, 32), torch.float32, 1e-6, 1e-5),
    ((2, 5, 16), torch.bfloat16, 1e-2, 1.6e-2),
    ((3, 7, 64), torch.bfloat16, 1e-2, 1.6e-2),
    ((3, 7, 64), torch.float16, 1e-3, 2e-3),
]


def _ids(case):
    shape, dtype, *_ = case
    return f"{'x'.join(map(str, shape))}-{str(dtype).removeprefix('torch.')}"


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3.0).to(dtype)
    w = (1.0 + 0.5 * torch.randn(shape[-1], generator=g)).to(dtype)
    return x, w


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_matches_torch_rms_norm(impl, case):
    shape, dtype, atol, rtol = case
    x, w = _inputs(shape, dtype)
    eps = 1e-6
    got = impl(EX).rms_norm(x, w, eps)
    assert isinstance(got, torch.Tensor), f"应返回 torch.Tensor，实际返回了 {type(got).__name__}"
    assert got.shape == x.shape, f"输出形状应为 {tuple(x.shape)}，实际为 {tuple(got.shape)}"
    assert got.dtype == dtype, f"输出 dtype 应与输入相同 ({dtype})，实际为 {got.dtype}"
    want = F.rms_norm(x, (shape[-1],), w, eps)
    err = (got.float() - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol), (
        f"与 torch.nn.functional.rms_norm 不一致：形状 {tuple(shape)}、dtype {dtype}，"
        f"最大绝对误差 {err:.3g}（允许 atol={atol}, rtol={rtol}）。"
        f"期望前几个值 {want.flatten()[:4].tolist()}，实际 {got.flatten()[:4].tolist()}"
    )


def test_eps_is_used(impl):
    # An all-zero row: mean(x^2) = 0, so the result depends only on eps (and must not be NaN).
    x = torch.zeros(2, 8)
    x[1] = 1e-3
    w = torch.ones(8)
    eps = 1e-2
    got = impl(EX).rms_norm(x, w, eps)
    want = F.rms_norm(x, (8,), w, eps)
    assert not torch.isnan(got).any(), "输入全为 0 时输出出现了 NaN：eps 应加在均方值上、开方之前"
    assert torch.allclose(got, want, atol=1e-6), (
        f"eps={eps} 时结果不对：期望 {want[1, :3].tolist()}，实际 {got[1, :3].tolist()}。"
        "提示：eps 要加在 mean(x**2) 上，再开平方"
    )


def test_does_not_modify_input(impl):
    x, w = _inputs((4, 16), torch.float32, seed=1)
    x0, w0 = x.clone(), w.clone()
    impl(EX).rms_norm(x, w, 1e-6)
    assert torch.equal(x, x0), "输入 x 被原地修改 (in-place) 了：期望 x 保持不变"
    assert torch.equal(w, w0), "weight 被原地修改 (in-place) 了：期望 weight 保持不变"


def test_bf16_close_to_fp32_reference(impl):
    # Values whose squares need more than bf16's 8 bits to average accurately: the result
    # must be within bf16 rounding of the fp32 reference.
    x, w = _inputs((8, 256), torch.bfloat16, seed=2)
    got = impl(EX).rms_norm(x, w, 1e-6)
    ref = F.rms_norm(x.float(), (256,), w.float(), 1e-6)
    assert got.dtype == torch.bfloat16, f"输出 dtype 应为 torch.bfloat16，实际为 {got.dtype}"
    rel = ((got.float() - ref).abs() / ref.abs().clamp_min(1e-3)).max().item()
    # Two bf16 roundings (cast back, then multiply by weight) -> at most ~2 * 2**-8.
    assert rel < 2.0**-6, (
        f"bf16 输入的结果离 float32 参考值太远：最大相对误差 {rel:.3g}，期望 < {2.0**-6:.3g}。"
        "提示：先 x.float() 再计算，最后 .to(x.dtype)"
    )
