"""memory.per_rank_state_bytes and memory.collective_bytes_per_step against real gloo runs
(measure.rank_state_run: fsdp.rank_state_bytes per rank, and the c10d calls of a profiled step).

The state is compared byte for byte (the formula counts what the tensors hold, no tolerance).
The configs have dimensions that do not divide by the world size, and one with a rank that
holds no rows of a parameter."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.lab.measure import collectives_table, rank_state_run, rank_state_table
from course_lib.memory import collective_bytes_per_step, fsdp_units, param_shapes, per_rank_state_bytes, shard_rows
from course_lib.model import DIYModel

# 259 x 36 embedding, 51-wide MLP: dim 0 of 259 and 51 does not divide by 2
UNEVEN = ModelConfig(vocab_size=259, d_model=36, n_layers=1, n_heads=3, n_kv_heads=1, ffn_hidden=51, max_seq_len=32)
# k_proj / v_proj have 4 rows: over 3 ranks 2, 2, 0; untied output projection
ZERO_ROWS = ModelConfig(
    vocab_size=260, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=20, max_seq_len=32, tie_embeddings=False
)


@pytest.mark.parametrize("n0,world", [(7, 2), (3, 2), (1, 2), (5, 4), (4, 3), (12, 5), (258, 1)])
def test_shard_rows_are_torch_chunk_padded_with_empty_ranks(n0, world):
    chunks = [c.shape[0] for c in torch.arange(n0).chunk(world)]
    chunks += [0] * (world - len(chunks))
    assert [shard_rows(n0, world, r) for r in range(world)] == chunks


@pytest.mark.parametrize("cfg", [UNEVEN, ZERO_ROWS])
def test_param_shapes_and_units_match_the_model(cfg):
    model = DIYModel(cfg)
    assert param_shapes(cfg) == {n: tuple(p.shape) for n, p in model.named_parameters()}
    units = fsdp_units(cfg)
    assert sorted(units) == sorted([f"layers.{i}" for i in range(cfg.n_layers)] + ["root"])
    assert sum(len(v) for v in units.values()) == len(param_shapes(cfg))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_fsdp_shards_add_up_to_the_ddp_copy(world):
    ddp = per_rank_state_bytes(ZERO_ROWS, world, "ddp")
    shards = [per_rank_state_bytes(ZERO_ROWS, world, "fsdp", rank=r) for r in range(world)]
    assert sum(s["params"] for s in shards) == ddp["params"]
    counters = 4 * len(param_shapes(ZERO_ROWS))  # AdamW step counters: on every rank
    assert sum(s["optimizer"] - counters for s in shards) == ddp["optimizer"] - counters
    assert shards[0]["params"] >= shards[-1]["params"]


def test_bad_arguments_name_the_field():
    for kwargs, field in (
        (dict(world_size=0), "world_size"),
        (dict(world_size=2, rank=2), "rank"),
        (dict(world_size=2, strategy="zero3"), "strategy"),
        (dict(world_size=2, optimizer="lion"), "optimizer"),
        (dict(world_size=2, dtype="fp8"), "dtype"),
    ):
        with pytest.raises(ValueError, match=field):
            per_rank_state_bytes(UNEVEN, **kwargs)


def test_collective_formula_counts():
    ddp = collective_bytes_per_step(UNEVEN, 2, "ddp")
    fsdp = collective_bytes_per_step(UNEVEN, 2, "fsdp")
    n = DIYModel(UNEVEN).num_parameters()
    assert ddp["elements"]["all_reduce"] == n
    # FSDP reduce-scatters padded shards: 259 -> 260 rows of the embedding, 51 -> 52 of gate and up
    assert fsdp["elements"]["reduce_scatter"] == n + 36 + 2 * 36
    assert ddp["sent_total"] == 2 * (1 / 2) * n * 4
    assert fsdp["calls"] == {
        "all_reduce": 0,
        "all_gather": 1 + 2 * UNEVEN.n_layers,
        "reduce_scatter": 1 + UNEVEN.n_layers,
    }
    keep = collective_bytes_per_step(UNEVEN, 2, "fsdp", reshard_after_forward=False)
    assert keep["calls"]["all_gather"] == 1 + UNEVEN.n_layers
    assert collective_bytes_per_step(UNEVEN, 1, "fsdp")["sent_total"] == 0


@pytest.mark.parametrize(
    "cfg,world,reshard", [(UNEVEN, 2, True), (ZERO_ROWS, 3, False)], ids=["uneven-2", "zero-rows-3"]
)
def test_estimate_equals_measured_per_rank_and_collectives(cfg, world, reshard):
    run = rank_state_run(cfg, world, reshard_after_forward=reshard)
    rows = rank_state_table(cfg, [run])
    assert len(rows) == 2 * world
    bad = [r for r in rows if not r["match"]]
    assert not bad, f"estimate != measured: {bad}"
    fsdp = [r for r in rows if r["strategy"] == "fsdp"]
    ddp = [r for r in rows if r["strategy"] == "ddp"]
    # the lesson's claim: params + optimizer per rank ~ 1/world of DDP's (exactly, less the step counters
    # and the uneven rows)
    ratio = (fsdp[0]["params_measured"] + fsdp[0]["optimizer_measured"]) / (
        ddp[0]["params_measured"] + ddp[0]["optimizer_measured"]
    )
    assert abs(ratio - 1 / world) < 0.05, ratio
    for row in collectives_table(cfg, run, reshard_after_forward=reshard):
        assert row["elements_formula"] == row["elements_measured"], row
        if row["calls_formula"] is not None:
            assert row["calls_formula"] == row["calls_measured"], row
