"""Grader for exercises/ex402_lr_schedule.py: against closed-form values and, when importable,
transformers.get_cosine_schedule_with_warmup (min_lr = 0). Tolerance 1e-12 relative: the
formulas are the same, only float rounding order may differ."""

import math

import pytest
import torch

EX = "ex402_lr_schedule"


def closed_form(step, peak, warmup, total, min_lr):
    if step < warmup:
        return peak * step / warmup
    if step >= total:
        return min_lr
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize(
    "peak,warmup,total,min_lr", [(1e-3, 10, 100, 0.0), (3e-3, 50, 600, 3e-4), (1.0, 1, 5, 0.1), (0.5, 0, 20, 0.0)]
)
def test_closed_form(impl, peak, warmup, total, min_lr):
    f = impl(EX).lr_at
    for s in range(total + 5):
        got, want = f(s, peak, warmup, total, min_lr), closed_form(s, peak, warmup, total, min_lr)
        assert isinstance(got, float), f"应返回 float，step={s} 返回了 {type(got).__name__}"
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (
            f"step={s}（warmup={warmup}, total={total}, peak={peak}, min_lr={min_lr}）：期望 {want}，实际 {got}"
        )


def test_hf_convention_first_step_is_zero(impl):
    f = impl(EX).lr_at
    assert f(0, 1e-3, 10, 100) == 0.0, "HF 约定：预热的第 0 步 lr = 0"
    assert f(10, 1e-3, 10, 100) == pytest.approx(1e-3), "预热结束那一步应达到 peak_lr"


def test_matches_transformers(impl):
    tr = pytest.importorskip("transformers")
    f = impl(EX).lr_at
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2e-3)
    sched = tr.get_cosine_schedule_with_warmup(opt, num_warmup_steps=8, num_training_steps=64)
    for s in range(64):
        want = opt.param_groups[0]["lr"]
        assert f(s, 2e-3, 8, 64) == pytest.approx(want, rel=1e-12, abs=1e-18), (
            f"与 transformers.get_cosine_schedule_with_warmup 不一致：step={s} 期望 {want}，实际 {f(s, 2e-3, 8, 64)}"
        )
        opt.step()
        sched.step()
