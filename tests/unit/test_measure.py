"""course_lib.lab.measure: the lesson harnesses return what the lessons print (tiny model, quick)."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.kv_cache import kv_cache_bytes_formula
from course_lib.lab.measure import (
    comparison_table,
    decode_speed_vs_context,
    long_context_copy,
    measure_generation,
    paged_vs_static_memory,
    throughput_vs_batch,
)
from course_lib.model import DIYModel


def tiny():
    torch.manual_seed(0)
    return DIYModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)).eval()


def test_generation_timings_have_the_lesson_columns():
    m = tiny()
    r = measure_generation(m, 2, 8, 4, cache="dynamic")
    assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["cache"] == "dynamic"
    assert measure_generation(m, 1, 8, 2, cache=None)["cache"] == "none"
    rows = decode_speed_vs_context(m, [8, 16], new_tokens=2, repeats=1)
    assert [r["context"] for r in rows] == [8, 16]
    assert all(r["speedup"] == pytest.approx(r["cache_tok_s"] / r["no_cache_tok_s"]) for r in rows)
    rows = throughput_vs_batch(m, [1, 2], prompt_len=4, new_tokens=2, repeats=1)
    assert rows[0]["vs_batch1"] == 1.0


def test_long_context_copy_keeps_the_weights():
    m = tiny()
    big = long_context_copy(m, 256)
    assert big.config.max_seq_len == 256
    for k, v in m.state_dict().items():
        assert torch.equal(v, big.state_dict()[k])
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(big(ids).logits, m(ids).logits)


def test_paged_memory_counts_blocks_and_tokens():
    m = tiny()
    c = m.config
    r = paged_vs_static_memory(m, [5, 20], max_len=64, block_size=8)
    assert r["token_bytes"] == sum(
        kv_cache_bytes_formula(c.n_layers, c.n_kv_heads, c.head_dim, n, 1, 4) for n in (5, 20)
    )
    assert r["blocks_used"] == 1 + 3
    assert r["paged_bytes"] == 4 * kv_cache_bytes_formula(c.n_layers, c.n_kv_heads, c.head_dim, 8, 1, 4)
    assert r["static_bytes"] == 2 * kv_cache_bytes_formula(c.n_layers, c.n_kv_heads, c.head_dim, 64, 1, 4)
    assert r["paged_waste"] < r["static_waste"]


def test_comparison_table_rows_are_relative_to_fp32(tmp_path):
    m = tiny()
    toks = torch.randint(0, 256, (600,))
    rows = comparison_table(
        m,
        toks,
        group_size=32,
        big_batch=2,
        prompt_len=4,
        new_tokens=2,
        eval_batches=1,
        seq_len=16,
        methods=("fp32", "int8"),
        out_dir=tmp_path,
    )
    assert [r["method"] for r in rows] == ["fp32", "int8"]
    assert rows[0]["size_ratio"] == 1.0 and rows[0]["kl_vs_fp32"] == pytest.approx(0, abs=1e-9)
    assert rows[1]["size_ratio"] < 0.6 and rows[1]["top1_vs_fp32"] > 0.5


def test_speed_config_and_config_inputs():
    from course_lib.lab.measure import as_model, interleaved_rounds, quantized_decode_speed, speed_config

    big = DIYModel(speed_config(quick=False))
    assert big.num_parameters() >= 20_000_000
    small = speed_config(quick=True).replace(max_seq_len=64)
    assert isinstance(as_model(small), DIYModel)
    r = measure_generation(small, 1, 4, 2)  # a config is accepted: random init
    assert r["decode_tok_s"] > 0
    calls = []
    res = interleaved_rounds({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 3.0}, 2)
    assert calls == ["a", "b", "a", "b"]  # in turn, round after round
    assert res["b"]["median"] == 3.0 and res["a"]["min"] == res["a"]["max"] == 1.0
    rows = quantized_decode_speed(
        tiny(),
        methods=("fp32", "int8", "int4"),
        batch_sizes=(1, 2),
        group_size=32,
        prompt_len=4,
        new_tokens=2,
        rounds=1,
    )
    assert [(r["method"], r["batch_size"]) for r in rows][:3] == [("fp32", 1), ("int8", 1), ("int4", 1)]
    assert all(r["min"] <= r["decode_tok_s"] <= r["max"] for r in rows) and rows[0]["vs_fp32"] == 1.0


def test_compiled_vs_eager_reports_or_skips(monkeypatch):
    import course_lib.lab.measure as measure

    monkeypatch.setattr(measure, "compile_available", lambda: (False, "no C++ compiler"))
    assert measure.compiled_vs_eager(tiny()) == {"available": False, "reason": "no C++ compiler"}
