"""Grader for exercises/ex401_checkpoint.py: save -> load -> continue must be bitwise-identical
to never stopping (oracle: the same training without a checkpoint), and loading must refuse a
malicious pickle (weights_only=True)."""

import io
import os

import pytest
import torch

EX = "ex401_checkpoint"


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def train(model, opt, steps, start):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("target", ["path", "fileobj"])
def test_resume_is_bitwise_identical(impl, tmp_path, target):
    ex = impl(EX)
    ref_model, ref_opt = make()
    train(ref_model, ref_opt, 10, 0)

    model, opt = make()
    train(model, opt, 5, 0)
    dest = tmp_path / "ckpt.pt" if target == "path" else io.BytesIO()
    ex.save_checkpoint(model, opt, 5, dest)
    if target == "fileobj":
        dest.seek(0)
    fresh_model, fresh_opt = make(seed=123)  # different initial weights
    it = ex.load_checkpoint(dest, fresh_model, fresh_opt)
    assert it == 5, f"load_checkpoint 应返回保存时的 iteration=5，实际返回 {it!r}"
    train(fresh_model, fresh_opt, 5, it)
    for (name, a), b in zip(ref_model.state_dict().items(), fresh_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), (
            f"恢复后继续训练的参数 {name} 与未中断的训练不是逐位相同：是否保存并恢复了"
            "优化器状态 (optimizer.state_dict(): Adam 的一阶/二阶矩和步数)？"
        )


def test_checkpoint_loads_with_weights_only(impl, tmp_path):
    model, opt = make()
    train(model, opt, 2, 0)
    impl(EX).save_checkpoint(model, opt, 2, tmp_path / "c.pt")
    try:
        state = torch.load(tmp_path / "c.pt", weights_only=True)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"保存的文件无法用 weights_only=True 加载（只能放张量和普通容器）：{e}")
    assert isinstance(state, dict), f"应保存一个 dict，实际是 {type(state).__name__}"


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(impl, tmp_path):
    marker = tmp_path / "PWNED"
    model, opt = make()
    train(model, opt, 1, 0)
    # first, a genuine checkpoint must load (so that "raises on everything" does not pass)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 1}, tmp_path / "ok.pt")
    assert impl(EX).load_checkpoint(tmp_path / "ok.pt", model, opt) == 1, "正常的 checkpoint 应能加载并返回 iteration"
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 1, "x": Evil(marker)},
        tmp_path / "evil.pt",
    )
    with pytest.raises(Exception):  # noqa: B017 -- any refusal will do, as long as nothing runs
        impl(EX).load_checkpoint(tmp_path / "evil.pt", model, opt)
    assert not marker.exists(), "加载时执行了文件里藏的代码！torch.load 必须用 weights_only=True，它会拒绝这种文件"
