"""Grader for exercises/ex416_per_rank_memory.py. Oracle: real runs. ``course_lib.lab.measure.rank_state_run``
starts 1 and 2 gloo processes on the CPU, trains one AdamW step under DDP and under FSDP2
(``fully_shard``) and reads every rank's tensors with ``course_lib.fsdp.rank_state_bytes``
(local shards, a tied parameter once, the optimizer's whole state). Exact integers: the
contract counts what the tensors hold, so no tolerance.

The model has dimensions that do not divide by 2 (a 259-row embedding, a 51-wide MLP): rank 0
holds ceil(n0/2) rows of those, rank 1 the rest. A rank that holds no rows of a parameter needs
3 or more processes; that case is checked against ``course_lib.memory.per_rank_state_bytes``,
which tests/unit/test_fsdp_memory.py compares byte for byte with a real 3-process run.
The measurements run once per module and only after the learner's function has answered (a stub
fails at once)."""

import pytest

from course_lib.config import ModelConfig
from course_lib.lab.measure import rank_state_run
from course_lib.memory import param_shapes, per_rank_state_bytes

EX = "ex416_per_rank_memory"
KEYS = ("params", "grads", "optimizer", "total")
UNEVEN = ModelConfig(vocab_size=259, d_model=36, n_layers=1, n_heads=3, n_kv_heads=1, ffn_hidden=51, max_seq_len=32)
UNTIED = ModelConfig(
    vocab_size=258, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=40, max_seq_len=32, tie_embeddings=False
)
ZERO_ROWS = ModelConfig(
    vocab_size=260, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=20, max_seq_len=32, tie_embeddings=False
)


_RUNS: dict = {}


def measured(cfg: ModelConfig, world: int) -> dict:
    """One real run per (config, world size), cached for the module."""
    key = (repr(cfg), world)
    if key not in _RUNS:
        _RUNS[key] = rank_state_run(cfg, world, timeout_s=240)
    return _RUNS[key]


def why(cfg, got, want, world, strategy, rank) -> str:
    """The mismatch in words, with the likely mistake when the difference has a known shape."""
    diff = {
        k: (got.get(k) if isinstance(got, dict) else None, want[k])
        for k in KEYS
        if not isinstance(got, dict) or got.get(k) != want[k]
    }
    lines = [f"world_size={world}, strategy={strategy!r}, rank={rank}：实测 {want}，你的结果 {got}。"]
    if not isinstance(got, dict):
        return lines[0] + " 应返回 dict。"
    n_tensors = len(param_shapes(cfg))
    if "optimizer" in diff and isinstance(got.get("optimizer"), int):
        delta = want["optimizer"] - got["optimizer"]
        if delta == 4 * n_tensors or (strategy == "fsdp" and 0 < delta < 4 * n_tensors):
            lines.append(
                "optimizer 少了 AdamW 的 step 计数器：每个参数张量一个 4 字节的 0 维张量，不分片，每个 rank 都有。"
            )
    if strategy == "fsdp" and "params" in diff and isinstance(got.get("params"), int):
        if got["params"] > want["params"]:
            lines.append("params 偏大：补齐 (padding) 的行不计入；最后的 rank 只拿余下的行（可能是 0 行）。")
        else:
            lines.append("params 偏小：第 0 维不能整除时，前面的 rank 每份 c = ceil(n0 / world_size) 行。")
    if strategy == "ddp" and "params" in diff:
        lines.append("DDP 下每个 rank 都有完整的一份，与 world_size 无关；绑定的参数只算一次。")
    if isinstance(got.get("total"), int) and got.get("total") != sum(got.get(k, 0) or 0 for k in KEYS[:3]):
        lines.append("total 应等于 params + grads + optimizer。")
    return "\n".join(lines)


@pytest.mark.parametrize("strategy,rank", [("ddp", 0), ("ddp", 1), ("fsdp", 0), ("fsdp", 1)])
def test_two_ranks_match_measurement(impl, strategy, rank):
    got = impl(EX).per_rank_memory(UNEVEN, 2, strategy, rank)
    want = measured(UNEVEN, 2)[strategy]["ranks"][rank]
    assert isinstance(got, dict) and all(got.get(k) == want[k] for k in KEYS), why(UNEVEN, got, want, 2, strategy, rank)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_rank_holds_everything(impl, strategy):
    got = impl(EX).per_rank_memory(UNTIED, 1, strategy, 0)
    want = measured(UNTIED, 1)[strategy]["ranks"][0]
    assert isinstance(got, dict) and all(got.get(k) == want[k] for k in KEYS), (
        why(UNTIED, got, want, 1, strategy, 0) + "\n（world_size=1：FSDP 没有东西可分，与 DDP 相同。）"
    )


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_three_ranks_one_with_no_rows(impl, rank):
    """k_proj and v_proj have 4 rows: over 3 ranks that is 2, 2, 0."""
    got = impl(EX).per_rank_memory(ZERO_ROWS, 3, "fsdp", rank)
    want = {k: v for k, v in per_rank_state_bytes(ZERO_ROWS, 3, "fsdp", rank=rank).items() if k in KEYS}
    assert isinstance(got, dict) and all(got.get(k) == want[k] for k in KEYS), why(
        ZERO_ROWS, got, want, 3, "fsdp", rank
    )


@pytest.mark.parametrize("world,rank", [(2, 2), (2, -1), (0, 0)])
def test_bad_rank_or_world_size_raises(impl, world, rank):
    with pytest.raises(ValueError):
        impl(EX).per_rank_memory(UNEVEN, world, "fsdp", rank)
