"""memory.estimate against the real peak, parameter counts, and the max-batch search."""
import pytest

from course_lib.config import ModelConfig
from course_lib.memory import MiB, compare, count_params, estimate, find_max_batch_size
from course_lib.model import DIYModel

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=128)
MHA = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=96, max_seq_len=64)


@pytest.mark.parametrize("cfg", [TINY, MHA, ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                                        ffn_hidden=64, tie_embeddings=False)])
def test_param_count_matches_model(cfg):
    assert count_params(cfg)["total"] == DIYModel(cfg).num_parameters()


@pytest.mark.parametrize("cfg,dtype", [(TINY, "fp32"), (TINY, "bf16"), (MHA, "fp32")])
def test_estimate_within_10_percent_of_measured_peak(cfg, dtype):
    row = compare(cfg, 4, 64, dtype)
    assert row["within_10pct"], (f"估计值 {row['estimate_MiB']:.2f} MiB，实测峰值 {row['measured_MiB']:.2f} MiB，"
                                 f"误差 {row['error_pct']:.1f}%（目标 ±10%）")


def test_breakdown_and_optimizer_state():
    e = estimate(TINY, 4, 64, "fp32", "adamw")
    n = count_params(TINY)["total"]
    assert e.params == e.grads == 4 * n and e.optimizer_state == 8 * n and e.autocast_copies == 0
    assert estimate(TINY, 4, 64, "fp32", "sgd").optimizer_state == 0
    assert estimate(TINY, 4, 64, "bf16").autocast_copies == 2 * count_params(TINY)["matrices"]
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
