"""Grader for exercises/ex413_sharded_stream.py: read through real DataLoaders with 0, 1 and 2
worker processes on 1, 2 and 3 ranks. Oracle: the set 0..N-1 (each sample exactly once per
epoch), the same rank read with a different worker count (order must not depend on it), and
the uninterrupted epoch (a resumed read must continue it exactly)."""

import json
import multiprocessing

import pytest
from torch.utils.data import DataLoader

EX = "ex413_sharded_stream"
N = 23  # not a multiple of 2 or 3: ranks get different counts
CTX = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def read(ds, workers):
    kw = {"multiprocessing_context": CTX} if workers and CTX else {}
    return [int(x) for x in DataLoader(ds, batch_size=None, num_workers=workers, **kw)]


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_exactly_once_per_epoch(impl, world, workers):
    ex = impl(EX)
    per_rank = [read(ex.ShardedStream(N, rank=r, world_size=world, seed=1), workers) for r in range(world)]
    seen = sorted(x for part in per_rank for x in part)
    dup = sorted({x for x in seen if seen.count(x) > 1})
    missing = sorted(set(range(N)) - set(seen))
    assert not dup and not missing, (
        f"{world} 个 rank × {workers} 个 worker：每个样本应恰好一次。重复 {dup}，缺少 {missing}"
        + ("（每个 worker 都产生了整份数据？用 get_worker_info() 再切一次）" if dup and workers > 1 else "")
    )
    sizes = [len(p) for p in per_rank]
    assert max(sizes) - min(sizes) <= 1, f"各 rank 的样本数最多差 1，实际 {sizes}"


@pytest.mark.parametrize("world, rank", [(1, 0), (2, 1), (3, 2)])
def test_order_does_not_depend_on_workers(impl, world, rank):
    ex = impl(EX)
    orders = {w: read(ex.ShardedStream(N, rank=rank, world_size=world, seed=2), w) for w in (0, 1, 2)}
    assert orders[0] == orders[1] == orders[2], (
        f"rank {rank}/{world}：训练循环看到的顺序应与 worker 数无关：\n"
        f"W=0 {orders[0]}\nW=1 {orders[1]}\nW=2 {orders[2]}"
    )


def test_epochs_reshuffle_deterministically(impl):
    ex = impl(EX)
    a, b = ex.ShardedStream(N, seed=3), ex.ShardedStream(N, seed=3)
    e0 = read(a, 0)
    assert read(b, 0) == e0, "同一个 (seed, epoch) 两次读到的顺序应相同"
    a.set_epoch(1)
    e1 = read(a, 0)
    assert sorted(e1) == list(range(N)), f"第 1 个 epoch 也应恰好覆盖全部样本，实际 {e1}"
    assert e1 != e0, f"不同 epoch 的顺序应不同（set_epoch 之后重新打乱），两次都是 {e0}"
    a.set_epoch(0)
    assert read(a, 0) == e0, "set_epoch(0) 应回到第 0 个 epoch 的顺序"


@pytest.mark.parametrize("epoch, consumed, w_before, w_after", [(0, 5, 2, 0), (1, 3, 0, 2), (0, 0, 1, 1), (2, 8, 2, 2)])
def test_resume_mid_epoch_continues_exactly(impl, epoch, consumed, w_before, w_after):
    ex = impl(EX)
    ds = ex.ShardedStream(N, rank=1, world_size=2, seed=4)
    ds.set_epoch(epoch)
    full = read(ds, w_before)
    state = ds.state_dict(consumed)
    try:
        state = json.loads(json.dumps(state))  # plain ints and strings only
    except TypeError as e:
        pytest.fail(f"state_dict 应只含普通类型（int/str），才能放进 checkpoint：{e}")
    fresh = ex.ShardedStream(N, rank=1, world_size=2, seed=4)
    fresh.load_state_dict(state)
    rest = read(fresh, w_after)
    assert rest == full[consumed:], (
        f"epoch {epoch} 用掉 {consumed} 个后恢复（之前 {w_before} 个 worker，之后 {w_after} 个）：\n"
        f"期望 {full[consumed:]}\n实际 {rest}"
    )


def test_bad_arguments_are_refused(impl):
    ex = impl(EX)
    for kwargs in ({"num_samples": 0}, {"num_samples": 5, "rank": 2, "world_size": 2}):
        with pytest.raises(ValueError):
            ex.ShardedStream(**kwargs)
