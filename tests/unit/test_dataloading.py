"""The input pipeline under DDP: every sample exactly once per epoch across workers x ranks,
for the streaming dataset and for map-style data + DistributedSampler; set_epoch; resume."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from course_lib.config import ModelConfig, TrainConfig
from course_lib.data import TokenChunkDataset
from course_lib.dataloading import DistributedChunkBatches, make_loader, measure_throughput
from course_lib.train import Callback, Trainer

T, B = 10, 4
TOKENS = torch.arange(4021, dtype=torch.int32)  # token value == position: x[0] // T is the sample id
N = (len(TOKENS) - 1) // T  # 402 samples


def ids(x):
    return (x[:, 0] // T).tolist()


@pytest.mark.parametrize("kind", ["stream", "map"])
@pytest.mark.parametrize("world, workers", [(1, 2), (2, 0), (2, 2), (3, 2)])
def test_each_sample_once_per_epoch_through_dataloader(kind, world, workers):
    seen = []
    for rank in range(world):
        loader = make_loader(kind, TOKENS, T, B, num_workers=workers, seed=1, rank=rank, world_size=world)
        per_epoch = (N // world) // B
        for i, (x, y) in enumerate(loader):
            if i == per_epoch:
                break
            assert torch.equal(y, x + 1)
            seen.extend(ids(x))
    assert len(seen) == len(set(seen)), f"{kind}: 有样本在一个 epoch 内被读了两次"
    # dropped: fewer than world*B by the rank split, plus < B per rank by the batch split
    assert N - len(seen) < world * B + world * B, f"{kind}: 跳过的样本太多 ({N - len(seen)})"


def test_distributed_sampler_pads_without_drop_last():
    """The trap: drop_last=False makes every rank the same length by repeating samples."""
    ds = TokenChunkDataset(TOKENS, T)
    idx = [i for r in range(4) for i in DistributedSampler(ds, num_replicas=4, rank=r, seed=0, drop_last=False)]
    assert len(idx) > N and len(idx) != len(set(idx)), "402 个样本分给 4 个 rank 时应当出现重复 (padding)"
    idx = [i for r in range(4) for i in DistributedSampler(ds, num_replicas=4, rank=r, seed=0, drop_last=True)]
    assert len(idx) == len(set(idx)) == N - N % 4


def test_set_epoch_changes_the_order():
    ds = TokenChunkDataset(TOKENS, T)
    s = DistributedSampler(ds, num_replicas=2, rank=0, seed=0, drop_last=True)
    e0, e0_again = list(s), list(s)
    assert e0 == e0_again, "不调用 set_epoch 时每个 epoch 的顺序完全相同"
    s.set_epoch(1)
    assert list(s) != e0


def test_map_style_resume_mid_epoch_with_workers():
    a = DistributedChunkBatches(TOKENS, T, B, seed=2, rank=1, world_size=2)
    it = a.iterate()
    full = [next(it)[0] for _ in range(70)]  # crosses an epoch boundary (50 batches per epoch)
    b = DistributedChunkBatches(TOKENS, T, B, seed=2, rank=1, world_size=2)
    b.load_state_dict(a.state_dict(batches_consumed=45))
    it = b.iterate(num_workers=2)
    for j in range(45, 70):
        assert torch.equal(next(it)[0], full[j]), f"恢复后第 {j} 个批次不同"
    assert ids(full[0]) == b.batch_indices(0).tolist()


def test_trainer_map_loader_resumes_bitwise(tmp_path):
    mc = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)

    def cfg(out):
        return TrainConfig(
            max_steps=6,
            batch_size=4,
            seq_len=32,
            warmup_steps=1,
            eval_interval=100,
            log_interval=100,
            ckpt_interval=3,
            out_dir=str(out),
            tensorboard=False,
            loader="map",
        )

    ref = Trainer(mc, cfg(tmp_path / "a"), console=False)
    ref.fit()

    class Crash(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(mc, cfg(tmp_path / "b"), callbacks=[Crash()], console=False).fit()
    res = Trainer(mc, cfg(tmp_path / "b"), console=False)
    assert res.step == 3
    res.fit()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    from course_lib.train import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="loader"):
        Trainer(mc, cfg(tmp_path / "b").replace(loader="stream", max_steps=8), console=False)


def test_measure_throughput_reports_samples_per_second():
    r = measure_throughput(make_loader("map", TOKENS, T, B, delay_ms=1.0), n_batches=3)
    assert r["samples"] == 3 * B and r["samples_per_s"] > 0
    # 1 ms per sample sleeps => at most ~1000 samples/s in one process
    assert r["samples_per_s"] < 1000
