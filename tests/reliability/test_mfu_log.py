"""MFU reaches every sink of the training log (console, JSONL, TensorBoard)."""

import pytest

from course_lib import roofline as rl
from course_lib.config import ModelConfig


def test_mfu_in_training_log(tmp_path, tiny_corpus):
    """console, JSONL and TensorBoard carry the MFU; with a configured peak it is exactly
    tokens/s x FLOPs/token / peak."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from course_lib.config import TrainConfig
    from course_lib.monitor import read_jsonl
    from course_lib.train import Trainer

    mc = ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
    cfg = TrainConfig(
        data=tiny_corpus,
        max_steps=4,
        batch_size=4,
        seq_len=32,
        warmup_steps=1,
        eval_interval=4,
        eval_batches=1,
        log_interval=2,
        ckpt_interval=0,
        out_dir=str(tmp_path),
        val_fraction=0.1,
        peak_flops=1e9,
    )
    Trainer(mc, cfg, console=False).fit()
    recs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    fpt = rl.flops_per_token(mc, 32)
    for r in recs:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / 1e9, rel=1e-12)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "train/mfu" in acc.Tags()["scalars"]
