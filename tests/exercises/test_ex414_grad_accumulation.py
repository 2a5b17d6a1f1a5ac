"""Grader for exercises/ex414_grad_accumulation.py. Oracle: one optimizer step on the
concatenated big batch (with torch.nn.utils.clip_grad_norm_), with SGD and with AdamW.
SGD matters: AdamW is (almost) invariant to the gradient's scale, so a loop that forgets to
divide by N could pass an AdamW-only check; SGD's update is N times too big then.
Tolerance atol 1e-6: same maths, only the order of fp32 additions differs (parameters ~0.1-1,
fp32 eps 1.2e-7)."""

import pytest
import torch
import torch.nn.functional as F

EX = "ex414_grad_accumulation"


def setup(seed=0, opt="adamw"):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    if opt == "sgd":
        return model, torch.optim.SGD(model.parameters(), lr=0.1)
    return model, torch.optim.AdamW(model.parameters(), lr=0.05)


def data(n, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 6, generator=g), torch.randn(b, 3, generator=g) * 3) for _ in range(n)]


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("n, b, clip", [(1, 8, 0.0), (2, 4, 0.0), (4, 2, 0.0), (4, 3, 0.5)])
def test_equals_big_batch(impl, n, b, clip, opt):
    m1, o1 = setup(opt=opt)
    m2, o2 = setup(opt=opt)
    for step in range(3):
        mb = data(n, b, seed=step + 1)
        got = impl(EX).accumulation_step(m1, o1, mb, F.mse_loss, max_norm=clip)
        x, y = torch.cat([a for a, _ in mb]), torch.cat([c for _, c in mb])
        want = F.mse_loss(m2(x), y)
        want.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(m2.parameters(), clip)
        o2.step()
        o2.zero_grad()
        assert isinstance(got, float), f"应返回 Python float，实际 {type(got).__name__}"
        assert abs(got - float(want.detach())) < 1e-5, (
            f"第 {step + 1} 步返回的平均损失应为 {float(want.detach()):.6f}，实际 {got:.6f}"
        )
        for (k, p), q in zip(m1.named_parameters(), m2.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6), (
                f"{opt}, N={n}, B={b}, clip={clip}, 第 {step + 1} 步后参数 {k} 与大批次的一步不同，"
                f"最大差 {(p - q).abs().max():.3g}。提示：每个小批次的 loss 要除以 N；裁剪在所有小批次之后做一次"
            )


def test_one_optimizer_step_and_grads_cleared(impl):
    m, o = setup()
    impl(EX).accumulation_step(m, o, data(4, 2), F.mse_loss)
    steps = [int(s["step"]) for s in o.state_dict()["state"].values()]
    assert steps and all(s == 1 for s in steps), f"N 个小批次只应做一次 optimizer.step()，实际 step 计数 {steps}"
    assert all(p.grad is None or not p.grad.any() for p in m.parameters()), "结束时应清空梯度 (zero_grad)"
