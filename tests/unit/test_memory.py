"""memory.estimate against the real peak, parameter counts, and the max-batch search."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib.config import ModelConfig
from course_lib.memory import MiB, compare, count_params, estimate, find_max_batch_size
from course_lib.model import DIYModel

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=128)
MHA = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=96, max_seq_len=64)


@pytest.mark.parametrize(
    "cfg",
    [TINY, MHA, ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, tie_embeddings=False)],
)
def test_param_count_matches_model(cfg):
    assert count_params(cfg)["total"] == DIYModel(cfg).num_parameters()


@pytest.mark.parametrize("cfg,dtype", [(TINY, "fp32"), (TINY, "bf16"), (MHA, "fp32")])
def test_estimate_within_10_percent_of_measured_peak(cfg, dtype):
    row = compare(cfg, 4, 64, dtype)
    assert row["within_10pct"], (
        f"估计值 {row['estimate_MiB']:.2f} MiB，实测峰值 {row['measured_MiB']:.2f} MiB，"
        f"误差 {row['error_pct']:.1f}%（目标 ±10%）"
    )


class _CastCounter(TorchDispatchMode):
    """Bytes of the 16-bit copies autocast makes of the given parameters."""

    def __init__(self, params):
        super().__init__()
        self.ptrs, self.bytes = {p.data_ptr() for p in params}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.ptrs and out.dtype == torch.bfloat16:
            self.bytes += out.numel() * out.element_size()
        return out


def _state_bytes(opt):
    # per-parameter tensors only (AdamW's 0-d "step" counters are bookkeeping, not memory)
    return sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if torch.is_tensor(t) and t.dim() > 0
    )


def test_breakdown_parts_equal_the_real_tensors_of_a_step():
    """Each part of the estimate against what a real step allocates (not against its own formula)."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 64))
    model = DIYModel(TINY)
    params = list(model.parameters())  # shared (tied) tensors once
    e = estimate(TINY, 4, 64, "fp32", "adamw")
    assert e.params == sum(p.numel() * p.element_size() for p in params)
    model(x, targets=x).loss.backward()
    assert e.grads == sum(p.grad.numel() * p.grad.element_size() for p in params)
    for name, make in (
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-4)),
        ("sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=1e-4, momentum=0.9)),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-4)),
    ):
        opt = make(params)
        opt.step()
        assert estimate(TINY, 4, 64, "fp32", name).optimizer_state == _state_bytes(opt), name
    counter = _CastCounter(params)
    with torch.autocast("cpu", dtype=torch.bfloat16), counter:
        model(x, targets=x)
    assert counter.bytes > 0
    assert estimate(TINY, 4, 64, "bf16").autocast_copies == counter.bytes
    assert e.autocast_copies == 0
    assert estimate(TINY, 8, 64).activations == pytest.approx(2 * e.activations, rel=1e-9)
    assert e.breakdown()["peak"] == pytest.approx(e.peak / MiB)
    with pytest.raises(ValueError, match="dtype"):
        estimate(TINY, 4, 64, "fp8")
    with pytest.raises(ValueError, match="optimizer"):
        estimate(TINY, 4, 64, "fp32", "lion")


def test_find_max_batch_size_is_the_boundary():
    budget = 50 * MiB
    b = find_max_batch_size(budget, TINY, 128)
    assert b > 1
    assert estimate(TINY, b, 128).peak <= budget < estimate(TINY, b + 1, 128).peak
    assert find_max_batch_size(1024, TINY, 128) == 0
