"""Grader for ex422: int8 per-channel quantization (oracle: course_lib.quantize + the error bound)."""

import torch

from course_lib.quantize import quantize_int8 as ref_q

EX = "ex422_int8_quant"


def _w():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 40, generator=g) * torch.logspace(-3, 1, 24)[:, None]


def test_shapes_and_dtypes(impl):
    q, s = impl(EX).quantize_int8(_w())
    assert q.dtype == torch.int8, f"q 的 dtype 应为 torch.int8，实际 {q.dtype}"
    assert tuple(q.shape) == (24, 40), f"q 形状应为 (24, 40)，实际 {tuple(q.shape)}"
    assert tuple(s.shape) == (24,), f"scale 形状应为 (24,)（每行一个），实际 {tuple(s.shape)}"


def test_matches_reference_and_error_bound(impl):
    w = _w()
    mod = impl(EX)
    q, s = mod.quantize_int8(w)
    rq, rs = ref_q(w)
    torch.testing.assert_close(s.float(), rs, rtol=1e-6, atol=0, msg="scale 应为每行 max|w| / 127")
    assert (q.int() - rq.int()).abs().max() <= 1, "q 应为 round(w / scale)（允许舍入边界处差 1）"
    deq = mod.dequantize_int8(q, s)
    assert deq.dtype == torch.float32, f"反量化结果应为 float32，实际 {deq.dtype}"
    err = (deq - w).abs()
    # round-to-nearest: |w - q*s| <= s/2 (plus fp32 rounding)
    bound = s[:, None] / 2 * (1 + 1e-5) + 1e-9
    assert (err <= bound).all(), (
        f"误差超过半个量化步长 scale/2：最大误差/步长 = {(err / s[:, None]).max():.3f}（应 <= 0.5）"
    )


def test_zero_row_and_range(impl):
    w = _w()
    w[3] = 0
    q, s = impl(EX).quantize_int8(w)
    assert torch.isfinite(s).all() and (s > 0).all(), "全零行的 scale 也必须 > 0 且有限"
    assert (q[3] == 0).all(), "全零行应量化为 0"
    assert q.abs().max() <= 127, "q 应截断在 [-127, 127]"
    assert torch.equal(q.abs().amax(1)[torch.arange(24) != 3], torch.full((23,), 127, dtype=torch.int8)), (
        "每行绝对值最大的元素应映射到 ±127（用满 int8 范围）"
    )
