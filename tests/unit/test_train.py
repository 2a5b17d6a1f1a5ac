"""The loop trains, resumes exactly, and the CLI works."""

import subprocess
import sys

import pytest
import torch

from course_lib.config import ModelConfig, TrainConfig
from course_lib.generate import generate
from course_lib.train import Callback, Trainer

MC = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def tc(out, **kw):
    base = dict(
        max_steps=12,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        eval_interval=6,
        eval_batches=1,
        log_interval=4,
        ckpt_interval=4,
        out_dir=str(out),
        tensorboard=False,
        lr=3e-3,
        min_lr=3e-4,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls(tmp_path):
    h = Trainer(ModelConfig(**MC), tc(tmp_path, max_steps=30), console=False).fit()
    assert h[-1]["loss"] < h[0]["loss"] - 0.5


def test_resume_is_bitwise_identical(tmp_path):
    ref = Trainer(ModelConfig(**MC), tc(tmp_path / "a"), console=False)
    ref.fit()

    class Crash(Callback):  # simulate a crash right after the step-8 checkpoint
        def on_step_end(self, trainer, metrics):
            if trainer.step == 9:
                raise KeyboardInterrupt

    part = Trainer(ModelConfig(**MC), tc(tmp_path / "b"), callbacks=[Crash()], console=False)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed = Trainer(ModelConfig(**MC), tc(tmp_path / "b"), console=False)
    assert resumed.step == 8
    h = resumed.fit()
    assert [r["step"] for r in h] == [9, 10, 11, 12]
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [r["loss"] for r in ref.history[8:]] == [r["loss"] for r in h]


def test_cli_train_then_generate(tmp_path):
    env_cmd = [
        sys.executable,
        "-m",
        "course_lib.train",
        "--out-dir",
        str(tmp_path),
        "--max-steps",
        "6",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--ffn-hidden",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--no-tensorboard",
        "--eval-interval",
        "3",
    ]
    r = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "course_lib.generate",
            "--run",
            str(tmp_path),
            "--prompt",
            "def ",
            "--max-new-tokens",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def ")
    r = subprocess.run([sys.executable, "-m", "course_lib.train", "--lr", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "TrainConfig.lr" in r.stderr
    r = subprocess.run([sys.executable, "-m", "course_lib.train", "--help"], capture_output=True, text=True)
    assert "--warmup-steps" in r.stdout and "--grad-clip" in r.stdout


def test_generation_cache_equals_no_cache(tmp_path):
    torch.manual_seed(0)
    from course_lib.model import DIYModel

    m = DIYModel(ModelConfig(**MC)).eval()
    ids = torch.randint(0, 256, (2, 5))
    a = generate(m, ids, 15, use_cache=True)
    b = generate(m, ids, 15, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_no_host_sync_per_micro_batch(tmp_path, monkeypatch):
    """One optimizer step over 4 micro-batches reads numbers back from the device once (the NaN
    guard's loss + grad-norm), not once per micro-batch (nanoGPT style)."""
    t = Trainer(
        ModelConfig(**MC), tc(tmp_path, accumulation_steps=4, data="stdlib"), console=False, save_checkpoints=False
    )
    t.next_batch = lambda: (torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32)))
    reads, active = [], [True]
    for name in ("item", "tolist", "__float__", "__bool__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **kw):
            if active[0]:
                reads.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = t.optimizer.step

    def optimizer_step(*a, **kw):  # AdamW reads its CPU step counters: not a device sync
        active[0] = False
        try:
            return step(*a, **kw)
        finally:
            active[0] = True

    t.optimizer.step = optimizer_step
    t.train_step()
    monkeypatch.undo()
    assert reads == ["tolist"], f"每个 optimizer step 只应读回一次设备上的数值，实际：{reads}"


def test_cli_help_comes_from_the_config_metadata():
    from course_lib.cli import build_parser

    text = build_parser().format_help()
    for cls in (ModelConfig, TrainConfig):
        for f in cls.__dataclass_fields__.values():
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} 缺少 help 元数据"
            assert f.metadata.get("resume") in ("free", "schedule", "result", "match"), f.name
            assert "--" + f.name.replace("_", "-") in text
    assert "0 = only at the end" in text  # ckpt_interval: one description, the one in config.py


# ---- the resume policy as pure functions (course_lib.resume) --------------------------------------
def _saved_state(train_cfg: TrainConfig, world_size: int = 1, **train_overrides) -> dict:
    return {
        "config": {"model": ModelConfig(**MC).to_dict(), "train": dict(train_cfg.to_dict(), **train_overrides)},
        "data": {"loader": train_cfg.loader},
        "world_size": world_size,
    }


def test_resume_policy_refuses_another_model_or_world_size(tmp_path):
    from course_lib.resume import ConfigMismatchError, check_resumable

    cfg = tc(tmp_path)
    state = _saved_state(cfg)
    assert check_resumable(state, ModelConfig(**MC).to_dict(), cfg, 1, 0, tmp_path) == {}
    with pytest.raises(ConfigMismatchError, match=r"different model config \(fields \['d_model'\]\)"):
        check_resumable(state, ModelConfig(**dict(MC, d_model=64)).to_dict(), cfg, 1, 0, tmp_path)
    with pytest.raises(ConfigMismatchError, match="world_size=1 but this run has 2"):
        check_resumable(state, ModelConfig(**MC).to_dict(), cfg, 2, 0, tmp_path)


def test_resume_policy_returns_the_changed_settings_and_their_warnings(tmp_path):
    from course_lib.resume import change_warnings, check_resumable

    cfg = tc(tmp_path)
    state = _saved_state(cfg, max_steps=6, out_dir="/elsewhere")  # out_dir is free to change
    changes = check_resumable(state, ModelConfig(**MC).to_dict(), cfg, 1, 0, tmp_path)
    assert changes == {"max_steps": (6, 12)}
    lines = change_warnings(changes, 4, 1e-3, 2e-3)
    assert len(lines) == 2 and "max_steps 6 -> 12" in lines[0] and "0.001 -> 0.002" in lines[1]
    assert change_warnings({}, 4, 1e-3, 2e-3) == []


def test_checkpoint_kind_and_resharding_conditions(tmp_path):
    from course_lib.checkpoint import FORMAT, SHARDED_FORMAT
    from course_lib.resume import ConfigMismatchError, check_checkpoint_kind, reshards

    check_checkpoint_kind(FORMAT, "ddp", tmp_path)
    check_checkpoint_kind(None, "fsdp", tmp_path)
    with pytest.raises(ConfigMismatchError, match="--strategy fsdp but this run has --strategy ddp"):
        check_checkpoint_kind(SHARDED_FORMAT, "ddp", tmp_path)
    assert reshards({"world_size": 2}, 1, sharded=True) and not reshards({"world_size": 2}, 1, sharded=False)
    assert not reshards({"world_size": 2}, 2, sharded=True)


def test_sharded_load_latest_takes_keywords_only(tmp_path):
    """The two managers' load_latest differ: a positional map_location must not land in shards_fn."""
    from course_lib.checkpoint import CheckpointManager, ShardedCheckpointManager

    with pytest.raises(TypeError):
        ShardedCheckpointManager(tmp_path).load_latest("cpu")
    assert ShardedCheckpointManager(tmp_path).load_latest(map_location="cpu") is None
    assert CheckpointManager(tmp_path).load_latest("cpu") is None
    assert not issubclass(ShardedCheckpointManager, CheckpointManager), "siblings of one base, not parent/child"
