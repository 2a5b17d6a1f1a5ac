"""LR schedules against closed-form values and Hugging Face's own functions."""

import math

import pytest
import torch

from course_lib.schedule import build_scheduler, lr_multiplier, schedule_values


def hf_linear(step, warmup, total):
    # transformers.optimization._get_linear_schedule_with_warmup_lr_lambda, written out
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def hf_cosine(step, warmup, total, num_cycles=0.5):
    # transformers.optimization._get_cosine_schedule_with_warmup_lr_lambda, written out
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


@pytest.mark.parametrize("warmup,total", [(0, 10), (5, 50), (10, 11), (100, 1000)])
def test_linear_and_cosine_match_hf_formulas(warmup, total):
    for s in range(total + 1):  # past total_steps HF cosine rises again; ours stays at the floor
        assert lr_multiplier(s, kind="linear", warmup_steps=warmup, total_steps=total) == pytest.approx(
            hf_linear(s, warmup, total), abs=1e-12
        )
        assert lr_multiplier(s, kind="cosine", warmup_steps=warmup, total_steps=total) == pytest.approx(
            hf_cosine(s, warmup, total), abs=1e-12
        )


def test_matches_transformers_when_importable():
    tr = pytest.importorskip("transformers")
    for name, kind in (("get_linear_schedule_with_warmup", "linear"), ("get_cosine_schedule_with_warmup", "cosine")):
        p = torch.nn.Parameter(torch.zeros(1))
        o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)
        hf = getattr(tr, name)(o1, num_warmup_steps=7, num_training_steps=40)
        ours = build_scheduler(o2, kind, 7, 40)
        for _ in range(41):
            assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], abs=1e-15)
            o1.step()
            o2.step()
            hf.step()
            ours.step()


def test_hf_convention_first_step_is_zero_and_nanogpt_is_not():
    assert lr_multiplier(0, kind="cosine", warmup_steps=10, total_steps=100) == 0.0
    assert lr_multiplier(0, kind="cosine", warmup_steps=10, total_steps=100, hf_convention=False) == pytest.approx(0.1)
    assert lr_multiplier(9, kind="cosine", warmup_steps=10, total_steps=100, hf_convention=False) == 1.0


def test_cosine_floor_wsd_and_constant():
    v = schedule_values("cosine", 1e-3, 10, 100, min_lr=1e-4)
    assert v[10] == pytest.approx(1e-3) and min(v[10:]) >= 1e-4 - 1e-15
    assert v[-1] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    w = schedule_values("wsd", 1.0, 10, 100, min_lr=0.0, decay_fraction=0.2)
    assert w[10:80] == [1.0] * 70 and w[80] == 1.0 and w[90] == pytest.approx(0.5) and w[99] == pytest.approx(0.05)
    assert schedule_values("constant", 2.0, 4, 10)[4:] == [2.0] * 6
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(20, kind="exp", warmup_steps=0, total_steps=30)


@pytest.mark.parametrize("kind", ["linear", "cosine", "wsd"])
@pytest.mark.parametrize("warmup,total", [(0, 10), (5, 50), (10, 100)])
def test_min_lr_is_reached_exactly_at_total_steps(kind, warmup, total):
    """Every decay ends at the floor at total_steps, not before, and stays there."""
    ratio = 0.1
    m = [
        lr_multiplier(s, kind=kind, warmup_steps=warmup, total_steps=total, min_lr_ratio=ratio)
        for s in range(total + 5)
    ]
    assert m[total] == pytest.approx(ratio, abs=1e-12), f"{kind}: 在 total_steps 处应正好等于下限 min_lr"
    assert all(v == pytest.approx(ratio, abs=1e-12) for v in m[total:]), f"{kind}: total_steps 之后应保持在下限"
    assert m[total - 1] > ratio + 1e-9, f"{kind}: 在 total_steps 之前就到了下限（过早变平）"
    assert all(a >= b - 1e-12 for a, b in zip(m[warmup:], m[warmup + 1 :], strict=False)), f"{kind}: 衰减应单调不增"


def test_linear_with_min_lr_rescales_instead_of_clamping():
    """linear with min_lr > 0: lr = min + (peak - min) * (total - s) / (total - warmup)."""
    v = schedule_values("linear", 1.0, 10, 110, min_lr=0.2)
    for s in (10, 35, 60, 85, 109):
        want = 0.2 + 0.8 * (110 - s) / 100
        assert v[s] == pytest.approx(want, abs=1e-12), (s, v[s], want)
    # a clamp would reach the floor at step 90 and stay flat for the last 20 steps
    assert v[95] > v[100] > v[105] > 0.2
    assert lr_multiplier(110, kind="linear", warmup_steps=10, total_steps=110, min_lr_ratio=0.2) == pytest.approx(0.2)
