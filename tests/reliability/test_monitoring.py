"""Metrics reach the JSONL file and TensorBoard (read back with TensorBoard's own reader)."""

from __future__ import annotations

import pytest

from course_lib.config import ModelConfig, TrainConfig
from course_lib.monitor import ProgressBar, StepLogger, last_per_step, read_jsonl
from course_lib.train import Trainer

MC = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def test_tensorboard_and_jsonl_agree(tmp_path, tiny_corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(
        data=tiny_corpus,
        max_steps=10,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        eval_interval=5,
        eval_batches=1,
        log_interval=2,
        ckpt_interval=0,
        out_dir=str(tmp_path),
        tensorboard=True,
        val_fraction=0.1,
    )
    Trainer(ModelConfig(**MC), cfg, callbacks=[ProgressBar(leave=False)], console=False).fit()
    recs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in recs] == [2, 4, 6, 8, 10]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s"):
        assert all(key in r for r in recs), f"JSONL 每条记录都应有 {key}"
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss"):
        assert tag in tags, f"TensorBoard 里缺少 {tag}；实际有 {tags}"
    tb_loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in tb_loss] == [2, 4, 6, 8, 10]
    for (_s, v), r in zip(tb_loss, recs, strict=True):
        assert v == pytest.approx(r["loss"], rel=1e-6)  # TensorBoard stores float32
    assert [e.step for e in acc.Scalars("eval/loss")] == [5, 10]


def test_logger_interval_eta_and_dedupe(tmp_path):
    lg = StepLogger(tmp_path, total_steps=6, interval=3, tensorboard=False, console=False)
    lg.start(0)
    for s in range(1, 7):
        lg.count_tokens(100)
        lg.log(s, {"loss": 1.0 / s, "lr": 0.1, "grad_norm": 1.0})
    lg.close()
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [3, 6]
    assert recs[-1]["eta_s"] == 0
    # a resumed run appends steps again: the last record per step wins
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 0.5}\n{"step": 7, "lo')  # plus a torn last line
    curve = last_per_step(read_jsonl(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["loss"]) for r in curve] == [(3, 1 / 3), (6, 0.5)]
