"""course_lib.roofline: FLOP and byte counts against hand-computed values, probes that run fast."""

import time

import pytest
import torch

from course_lib import roofline as rl
from course_lib.config import ModelConfig

# vocab 10, d 8, 2 layers, 2 query heads / 1 kv head (head_dim 4), SwiGLU 16, tied embeddings
TINY = ModelConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=16, max_seq_len=32)


def test_param_counts_by_hand():
    # per layer: q 8x8 + k 4x8 + v 4x8 + o 8x8 = 192; MLP 3 x 8x16 = 384; 2 norms = 16 -> 592
    # 2 layers 1184 + final norm 8 + embedding 10x8 = 80 -> 1272
    assert rl.num_params(TINY) == 1272
    from course_lib.model import DIYModel

    assert rl.num_params(TINY) == DIYModel(TINY).num_parameters()
    untied = TINY.replace(tie_embeddings=False)
    assert rl.num_params(untied) == DIYModel(untied).num_parameters() == 1352
    assert rl.matmul_params(TINY) == 2 * (192 + 384) + 80 == 1232


def test_training_flops_by_hand():
    # 6N + 12 L H Q T = 6 * 1272 + 12 * 2 * 2 * 4 * 16
    assert rl.attention_flops_per_token(TINY, 16) == 3072
    assert rl.flops_per_token(TINY, 16) == 7632 + 3072 == 10704
    # untied: the input embedding is a lookup, nanoGPT's N counts the table once either way
    assert rl.flops_per_token(TINY.replace(tie_embeddings=False), 16) == 10704


def test_decode_bytes_by_hand():
    norms = (2 * 2 + 1) * 8 * 4  # 5 RMSNorm vectors, fp32
    assert rl.weight_bytes(TINY) == 1232 * 4 + norms == 5088
    rows = 2 * (8 + 4 + 4 + 8 + 16 + 16 + 8) + 10  # output rows of every matrix
    assert rl.weight_bytes(TINY, 8) == 1232 + rows * 4 + norms == 1944
    # int4, groups of 4: every in_features (8 or 16) splits into 2 or 4 groups
    groups = 2 * (8 * 2 + 4 * 2 + 4 * 2 + 8 * 2 + 16 * 2 + 16 * 2 + 8 * 4) + 10 * 2
    assert rl.weight_bytes(TINY, 4, group_size=4) == 1232 // 2 + groups * 4 + norms
    # KV: 2 (K, V) x 2 layers x 1 kv head x 4 dims x 16 positions x 3 rows x 4 bytes
    assert rl.kv_bytes_per_step(TINY, 16, 3) == 3072
    assert rl.decode_bytes_per_step(TINY, 16, 3) == 5088 + 3072
    assert rl.decode_flops_per_step(TINY, 16, 3) == 3 * (2 * 1232 + 4 * 2 * 2 * 4 * 16)


def test_flops_match_torch_flop_counter():
    """The formula against torch's own count of a training step (FlopCounterMode). Attention runs on
    SDPA's math backend so that its matmuls are counted (the fused CPU kernel has no FLOP formula);
    those count the full T x T square, like the formula. The difference left is exactly the norm
    weights, which nanoGPT's 6N counts although they are no matmul."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from course_lib.model import DIYModel

    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=64)
    torch.manual_seed(0)
    m = DIYModel(cfg)
    x = torch.randint(0, 258, (2, 64))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x, targets=x).loss.backward()
    norms = (2 * cfg.n_layers + 1) * cfg.d_model
    assert fc.get_total_flops() == x.numel() * (rl.flops_per_token(cfg, 64) - 6 * norms)


def test_mfu_mbu():
    assert rl.mfu(100.0, 1e6, 1e9) == pytest.approx(0.1)
    assert rl.mbu(10.0, 1e8, 4e9) == pytest.approx(0.25)


def test_probes_quick_and_positive():
    t0 = time.perf_counter()
    pts = rl.bandwidth_probe(quick=True, repeats=2, min_seconds=0.002)
    peak = rl.peak_flops_probe(quick=True, repeats=2, min_seconds=0.002)
    assert time.perf_counter() - t0 < 10
    assert len(pts) == 2 and all(p.gb_s > 0 and p.median_gb_s > 0 and p.copies >= 2 for p in pts)
    assert 1e7 < rl.best_bandwidth(pts) < 1e13
    assert 1e6 < peak < 1e16


def test_probes_use_no_random_numbers():
    state = torch.get_rng_state()
    rl.bandwidth_probe([0.25], quick=True, repeats=1, min_seconds=0.0)
    rl.peak_flops_probe(64, repeats=1, min_seconds=0.0)
    assert torch.equal(state, torch.get_rng_state())


def test_measured_peak_is_cached():
    a = rl.measured_peak_flops("cpu")
    t0 = time.perf_counter()
    assert rl.measured_peak_flops("cpu") == a > 0
    assert time.perf_counter() - t0 < 0.01


def test_llc_is_positive():
    assert rl.last_level_cache_bytes() >= 2**16


def test_mfu_measured_peak_and_console(tmp_path, capsys):
    from course_lib.monitor import StepLogger

    peak = rl.measured_peak_flops()
    lg = StepLogger(
        tmp_path, total_steps=2, interval=1, tensorboard=False, console=True, flops_per_token=1000.0, peak_flops=peak
    )
    lg.start(0)
    lg.count_tokens(100)
    rec = lg.log(1, {"loss": 1.0})
    lg.close()
    assert rec["mfu"] == pytest.approx(rec["tokens_per_s"] * 1000.0 / peak) and rec["mfu"] > 0
    assert "MFU " in capsys.readouterr().out
    off = StepLogger(None, total_steps=1, console=False).log(1, {"loss": 1.0})
    assert "mfu" not in off


def test_prefill_and_train_counts_by_hand():
    # causal prefill of 4 tokens: 2 * 1232 * 4 matmul FLOPs + 4 L H Q (1 + 2 + 3 + 4) attention
    assert rl.prefill_flops(TINY, 4) == 2 * 1232 * 4 + 4 * 2 * 2 * 4 * 10
    assert rl.prefill_bytes(TINY, 4, 2) == 5088 + 2 * 2 * 1 * 4 * 4 * 2 * 4
    assert rl.train_step_bytes(TINY) == 40 * 1272


def test_hotspots_name_course_lib_lines():
    from course_lib.lab.profiling import decode_loop
    from course_lib.model import DIYModel

    torch.manual_seed(0)
    m = DIYModel(TINY.replace(vocab_size=258)).eval()
    run = decode_loop(m, 1, 4, 3)
    run()
    with rl.stack_profiled() as prof:
        run()
    top = rl.hotspots(prof)
    assert 1 <= len(top) <= 3 and all(h["where"].startswith("course_lib/") and ".py:" in h["where"] for h in top)
    assert all(0 < h["share"] <= 1 for h in top) and top[0]["ms"] >= top[-1]["ms"]
