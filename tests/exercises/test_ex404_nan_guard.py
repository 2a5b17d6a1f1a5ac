"""Grader for exercises/ex404_nan_guard.py: finite steps pass and return the true grad-norm
(oracle: torch.nn.utils.get_total_norm-style computation via vector_norm, rtol 1e-5); NaN/Inf
in the loss or in any gradient raises, naming the step; nothing is modified."""

import pytest
import torch

EX = "ex404_nan_guard"


def setup(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Linear(4, 3)
    loss = m(torch.randn(5, 4)).pow(2).mean()
    loss.backward()
    return m, loss


def test_finite_step_returns_grad_norm(impl):
    m, loss = setup()
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])).item()
    before = [p.grad.clone() for p in m.parameters()]
    got = impl(EX).guard_step(3, loss, m.parameters())
    assert isinstance(got, float), f"应返回 float，实际 {type(got).__name__}"
    assert got == pytest.approx(want, rel=1e-5), f"全局梯度范数应为 {want:.6g}，实际 {got}"
    assert all(torch.equal(a, p.grad) for a, p in zip(before, m.parameters(), strict=True)), "不应修改梯度"


@pytest.mark.parametrize(
    "where,value", [("loss", float("nan")), ("loss", float("inf")), ("grad", float("nan")), ("grad", float("-inf"))]
)
def test_nonfinite_raises_naming_the_step(impl, where, value):
    ex = impl(EX)
    m, loss = setup()
    if where == "loss":
        loss = loss * value
    else:
        m.weight.grad[1, 2] = value
    with pytest.raises(ex.NonFiniteError) as e:
        ex.guard_step(17, loss, m.parameters())
    msg = str(e.value)
    assert "step 17" in msg, f"错误信息应包含出问题的步数 'step 17'，实际：{msg!r}"
    assert "learning rate" in msg.lower() or "学习率" in msg, (
        f"错误信息应列出可能的原因（至少提到学习率 / learning rate），实际：{msg!r}"
    )


def test_params_without_grad_are_skipped(impl):
    m, loss = setup()
    extra = torch.nn.Parameter(torch.ones(2))  # no .grad
    got = impl(EX).guard_step(1, loss, [*m.parameters(), extra])
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])).item()
    assert got == pytest.approx(want, rel=1e-5), f"没有梯度的参数应跳过：期望 {want:.6g}，实际 {got}"
