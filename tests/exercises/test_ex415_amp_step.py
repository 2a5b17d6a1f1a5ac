"""Grader for exercises/ex415_amp_step.py (fp16 autocast + GradScaler on CPU). Oracle: the same
steps written out with torch.amp / clip_grad_norm_ here; identical ops in the same order give
bitwise-equal results, so parameters are compared with torch.equal."""

import math

import torch
import torch.nn.functional as F

EX = "ex415_amp_step"


def setup():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    return m, torch.optim.AdamW(m.parameters(), lr=1e-2), torch.amp.GradScaler("cpu", init_scale=2.0**12)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)


def oracle_step(m, o, s, x, y, max_norm):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.mse_loss(m(x), y)
    s.scale(loss).backward()
    s.unscale_(o)
    n = float(torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm))
    s.step(o)
    s.update()
    o.zero_grad()
    return float(loss.detach()), n


def test_matches_reference_steps(impl):
    m1, o1, s1 = setup()
    m2, o2, s2 = setup()
    for step in range(3):
        x, y = batch(step)
        got = impl(EX).amp_train_step(m1, o1, s1, x, y, F.mse_loss, max_norm=0.5)
        want_loss, want_norm = oracle_step(m2, o2, s2, x, y, 0.5)
        assert set(got) >= {"loss", "grad_norm", "skipped"}, f"返回值应包含 loss/grad_norm/skipped，实际 {set(got)}"
        assert abs(got["loss"] - want_loss) < 1e-6, f"loss 应为 {want_loss}，实际 {got['loss']}"
        assert abs(got["grad_norm"] - want_norm) < 1e-4 * max(1, want_norm), (
            f"grad_norm 应为 unscale 之后的真实范数 {want_norm:.4g}，实际 {got['grad_norm']:.4g}"
            + (
                "（约为 scale 倍：是不是在 unscale_ 之前就裁剪/计算范数了？）"
                if got["grad_norm"] > 100 * want_norm
                else ""
            )
        )
        assert got["skipped"] is False
        for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
            assert torch.equal(p, q), f"第 {step + 1} 步后参数与参考实现不同（最大差 {(p - q).abs().max():.3g}）"


def test_inf_gradient_skips_step_and_halves_scale(impl):
    m, o, s = setup()
    x, y = batch(0)
    x = x.clone()
    x[0, 0] = float("inf")  # the forward pass produces inf/NaN, so do the gradients
    before = [p.detach().clone() for p in m.parameters()]
    scale = s.get_scale()
    got = impl(EX).amp_train_step(m, o, s, x, y, F.mse_loss, max_norm=1.0)
    assert got["skipped"] is True, "梯度含 inf 时这一步应被跳过 (skipped=True)"
    assert s.get_scale() == scale / 2, f"跳过后 scale 应减半：期望 {scale / 2}，实际 {s.get_scale()}"
    for a, p in zip(before, m.parameters(), strict=True):
        assert torch.equal(a, p), "被跳过的一步不应改动参数"
    x2, y2 = batch(1)
    ok = impl(EX).amp_train_step(m, o, s, x2, y2, F.mse_loss, max_norm=1.0)
    assert ok["skipped"] is False and math.isfinite(ok["grad_norm"]), "inf 之后的正常一步应照常进行（梯度要先清空）"
