"""FSDP strategy pieces that run in one process: sharded (DCP) checkpoints, the data position
in global samples, per-rank byte counts, export from a sharded checkpoint.

The multi-rank behaviour (2 ranks == 1 process, resharding 2 -> 1 and 1 -> 2, a SIGKILL inside
a sharded save, measured memory) is in tests/reliability/test_fsdp_torchrun.py and
test_fsdp_kill.py. A single process with ``strategy="fsdp"`` trains the plain model and writes
the same DCP checkpoints as N ranks do (one shard), which is what a 2 -> 1 resume loads.
"""

import json
import shutil
import warnings

import pytest
import torch

from course_lib.checkpoint import (
    MARKER_FILE,
    SHARDED_FORMAT,
    TRAINER_FILE,
    CheckpointError,
    CheckpointManager,
    ShardedCheckpointManager,
    checkpoint_format,
    safe_torch_load,
)
from course_lib.cli import build_parser, configs_from_args
from course_lib.config import ConfigError, ModelConfig, TrainConfig
from course_lib.data import DataError, StreamingTokenDataset
from course_lib.dataloading import DistributedChunkBatches
from course_lib.export import export_from_run, load_inference
from course_lib.export import main as export_main
from course_lib.fsdp import global_data_position, rank_state_bytes, reshard_data_position
from course_lib.model import DIYModel
from course_lib.train import ConfigMismatchError, Trainer

MC = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def tc(out, **kw):
    base = dict(
        max_steps=6,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        eval_interval=6,
        eval_batches=1,
        log_interval=1,
        ckpt_interval=2,
        keep_last=2,
        out_dir=str(out),
        tensorboard=False,
        strategy="fsdp",
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted single-process fsdp run of 6 steps, checkpoints at 2, 4, 6 (keeps 2)."""
    out = tmp_path_factory.mktemp("straight")
    tr = Trainer(ModelConfig(**MC), tc(out), console=False)
    tr.fit()
    return out, tr


def test_strategy_is_validated_in_one_line():
    with pytest.raises(ConfigError, match=r"TrainConfig.strategy: must be one of \('ddp', 'fsdp'\)"):
        TrainConfig(strategy="zero3")
    with pytest.raises(ConfigError, match="TrainConfig.dtype: fp16 .* not supported with strategy fsdp"):
        TrainConfig(strategy="fsdp", dtype="fp16")
    _, cfg = configs_from_args(build_parser().parse_args(["--strategy", "fsdp"]))
    assert cfg.strategy == "fsdp" and TrainConfig().strategy == "ddp"


def test_sharded_checkpoints_layout_and_rotation(straight):
    out, tr = straight
    mgr = ShardedCheckpointManager(out)
    assert [s for s, _ in mgr.list_complete()] == [4, 6], "keep_last=2 keeps the newest two"
    folder = mgr.latest()
    names = {p.name for p in folder.iterdir()}
    assert {".metadata", "__0_0.distcp", TRAINER_FILE, MARKER_FILE} <= names, names
    assert checkpoint_format(folder) == SHARDED_FORMAT
    marker = mgr.verify(folder)
    assert set(marker["files"]) == names - {MARKER_FILE}, "the marker covers every file written before it"
    state = safe_torch_load(folder / TRAINER_FILE)  # weights_only=True
    assert state["step"] == 6 and "model" not in state and "optimizer" not in state
    assert state["data"]["samples_consumed"] == 6 * 4 and state["data"]["global_micro_batch"] == 4
    assert not list(mgr.dir.glob("*.tmp")), "no temp folder left after complete saves"


def test_resume_from_sharded_checkpoint_is_bitwise_identical(straight, tmp_path):
    out, ref = straight
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(out / "checkpoints" / "step_00000004", tmp_path / "checkpoints" / "step_00000004")
    resumed = Trainer(ModelConfig(**MC), tc(tmp_path), console=False)
    assert resumed.step == 4 and resumed.batches_consumed == 4
    h = resumed.fit()
    assert [r["loss"] for r in h] == [r["loss"] for r in ref.history[4:]]
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for g_ref, g in zip(
        ref.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values(), strict=True
    ):
        assert torch.equal(g_ref["exp_avg_sq"], g["exp_avg_sq"])


def test_killed_save_and_corrupt_shard_fall_back(straight, tmp_path):
    out, _ = straight
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    mgr = ShardedCheckpointManager(tmp_path)
    # a save killed before its marker: a step_N.tmp folder with shards; it never counts
    half = mgr.tmp_path_for(8)
    shutil.copytree(mgr.path_for(6), half)
    (half / MARKER_FILE).unlink()
    # and the newest complete checkpoint has a flipped byte in its shard
    shard = mgr.path_for(6) / "__0_0.distcp"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        mgr.verify(mgr.path_for(6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = Trainer(ModelConfig(**MC), tc(tmp_path), console=False)
    assert tr.step == 4, "falls back to the previous complete checkpoint"
    assert any("skipping checkpoint step_00000006" in str(w.message) for w in caught)
    tr.fit()  # its next save replaces the corrupt step 6 and rotation drops the killed save's temp folder
    assert not half.exists() and [s for s, _ in mgr.list_complete()] == [4, 6]
    mgr.verify(mgr.path_for(6))


def test_strategy_mismatch_is_refused_not_overwritten(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ConfigMismatchError, match="--strategy fsdp but this run has --strategy ddp"):
        Trainer(ModelConfig(**MC), tc(out, strategy="ddp"), console=False)
    ddp_dir = tmp_path / "ddp"
    Trainer(ModelConfig(**MC), tc(ddp_dir, strategy="ddp", max_steps=2), console=False).fit()
    with pytest.raises(ConfigMismatchError, match="--strategy ddp but this run has --strategy fsdp"):
        Trainer(ModelConfig(**MC), tc(ddp_dir, max_steps=4), console=False)
    assert CheckpointManager(ddp_dir).latest() is not None


def test_export_from_sharded_checkpoint(straight, tmp_path):
    out, tr = straight
    info = export_from_run(out, tmp_path / "art")
    assert info["step"] == 6
    model, _, meta = load_inference(tmp_path / "art")
    assert meta["source_checkpoint"]["folder"] == "step_00000006"
    for k, v in tr.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_rank_state_bytes_counts_a_whole_model_once():
    model = DIYModel(ModelConfig(**MC))
    n = model.num_parameters()  # tied embedding counted once
    assert rank_state_bytes(model) == {"params": 4 * n, "grads": 0, "optimizer": 0, "total": 4 * n}
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (1, 8))
    model(x, targets=x).loss.backward()
    opt.step()
    got = rank_state_bytes(model, opt)
    n_tensors = len({id(p) for p in model.parameters()})
    assert got["grads"] == 4 * n and got["optimizer"] == 2 * 4 * n + 4 * n_tensors  # exp_avg, exp_avg_sq, step


@pytest.mark.parametrize("loader", [StreamingTokenDataset, DistributedChunkBatches])
def test_global_batches_do_not_depend_on_the_number_of_ranks(loader):
    """Together, W ranks of batch B read exactly the samples one process of batch B*W reads at
    the same batch number, across epoch boundaries: the basis of resharding the data position
    (both loaders: the stream and map-style + DistributedSampler)."""
    tokens = torch.arange(20_000) % 251
    one = loader(tokens, 32, 8, seed=3, rank=0, world_size=1)
    two = [loader(tokens, 32, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert one.batches_per_epoch == two[0].batches_per_epoch
    for j in range(2 * one.batches_per_epoch + 3):
        both = torch.cat([d.batch_indices(j) for d in two])
        assert sorted(both.tolist()) == sorted(one.batch_indices(j).tolist()), j


def test_reshard_data_position():
    saved = global_data_position(
        {
            "batches_consumed": 10,
            "batch_size": 4,
            "world_size": 2,
            "rank": 0,
            "seed": 1,
            "seq_len": 32,
            "fingerprint": "x",
            "loader": "stream",
        },
        2,
    )
    assert saved["samples_consumed"] == 80
    one = reshard_data_position(saved, batch_size=8, world_size=1, rank=0, accumulation_steps=2)
    assert one["batches_consumed"] == 10 and one["batch_size"] == 8 and one["world_size"] == 1
    with pytest.raises(DataError, match="use --batch-size 8"):
        reshard_data_position(saved, batch_size=4, world_size=1, rank=0, accumulation_steps=2)
    with pytest.raises(DataError, match="--accumulation-steps 2"):
        reshard_data_position(saved, batch_size=8, world_size=1, rank=0, accumulation_steps=1)


def test_marker_lists_every_file_and_a_missing_shard_is_caught(straight, tmp_path):
    out, _ = straight
    folder = tmp_path / "step_00000006"
    shutil.copytree(out / "checkpoints" / "step_00000006", folder)
    (folder / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match="missing although the marker lists it"):
        ShardedCheckpointManager.verify(folder)
    marker = json.loads((out / "checkpoints" / "step_00000006" / MARKER_FILE).read_text())
    assert marker["world_size"] == 1 and marker["format"] == SHARDED_FORMAT


def test_export_cli_detects_a_sharded_run(straight, tmp_path, capsys):
    out, _ = straight
    assert export_main([str(out), str(tmp_path / "art")]) == 0
    assert "sharded checkpoint step_00000006" in capsys.readouterr().out
    assert (tmp_path / "art" / "model.safetensors").is_file()
    assert export_main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no complete checkpoint"), err
