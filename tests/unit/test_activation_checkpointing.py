"""Activation checkpointing: same gradients, less memory, the estimate follows the measurement,
and the trainer's flag changes nothing but memory and time (also across a resume)."""

import contextlib
import json
import subprocess
import sys

import pytest
import torch

import course_lib.model as model_mod
from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.kv_cache import DynamicCache
from course_lib.memory import compare, estimate, find_max_batch_size, measure_peak, step_timer
from course_lib.model import DIYModel
from course_lib.train import Callback, Trainer

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=128)
# The three sizes of lesson 4.0.5 (quick mode: fewer layers in the largest, a smaller batch).
SIZES = {
    "tiny": TINY,
    "small": ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=352, max_seq_len=128),
    "medium": ModelConfig(d_model=256, n_layers=pick(6, 2), n_heads=8, n_kv_heads=8, ffn_hidden=704, max_seq_len=128),
}
BATCH, SEQ = pick(16, 8), pick(128, 64)


def _grads(cfg, ac, dtype="fp32", seed=0):
    torch.manual_seed(seed)
    model = DIYModel(cfg).set_activation_checkpointing(ac)
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    torch.manual_seed(seed + 1)  # same dropout draws in both runs
    with amp:
        loss = model(x, targets=x).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype,dropout", [("fp32", 0.0), ("bf16", 0.0), ("fp32", 0.1)])
def test_gradients_are_bitwise_identical(dtype, dropout):
    """On CPU the recomputed forward runs the same kernels on the same inputs (and checkpoint
    restores the RNG state for dropout), so the gradients are equal bit for bit, not just close."""
    cfg = TINY.replace(dropout=dropout)
    loss0, g0 = _grads(cfg, False, dtype)
    loss1, g1 = _grads(cfg, True, dtype)
    assert torch.equal(loss0, loss1)
    for name in g0:
        assert torch.equal(g0[name], g1[name]), (
            f"{name}: 开启 activation checkpointing 后梯度不同，最大差 {(g0[name] - g1[name]).abs().max().item():.3g}"
        )


def test_checkpoint_only_in_training_forwards(monkeypatch):
    calls = []
    real = model_mod.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(model_mod, "checkpoint", counting)
    model = DIYModel(TINY)
    keys = list(model.state_dict())
    assert model.set_activation_checkpointing(True) is model
    assert list(model.state_dict()) == keys and model.config == TINY  # no new state, same config
    x = torch.randint(0, 256, (2, 8))
    model.train()
    model(x, targets=x).loss.backward()
    assert calls == [False] * TINY.n_layers  # one checkpoint per block, non-reentrant
    calls.clear()
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    model.train()
    model(x, past_key_values=DynamicCache(), use_cache=True)  # generation with a KV cache
    assert calls == []
    model.set_activation_checkpointing(False)
    model(x, targets=x)
    assert calls == []


def test_checkpointing_lowers_the_measured_peak():
    cfg = SIZES["small"]
    without = measure_peak(cfg, BATCH, SEQ)["peak"]
    with_ac = measure_peak(cfg, BATCH, SEQ, activation_checkpointing=True)["peak"]
    assert with_ac < 0.8 * without, f"实测峰值：不开 {without / 2**20:.1f} MiB，开 {with_ac / 2**20:.1f} MiB"
    assert estimate(cfg, BATCH, SEQ, activation_checkpointing=True).activations < estimate(cfg, BATCH, SEQ).activations


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("ac", [False, True])
def test_estimate_within_10_percent_with_and_without_checkpointing(name, ac):
    row = compare(SIZES[name], BATCH, SEQ, "fp32", activation_checkpointing=ac)
    assert row["within_10pct"], (
        f"{name} AC={ac}: 估计 {row['estimate_MiB']:.2f} MiB，实测 {row['measured_MiB']:.2f} MiB，"
        f"误差 {row['error_pct']:.1f}%（目标 ±10%）"
    )


def test_estimate_with_checkpointing_bf16_and_batch_search():
    row = compare(TINY, 8, 64, "bf16", activation_checkpointing=True)
    assert row["within_10pct"], row
    e = estimate(TINY, 8, 64, activation_checkpointing=True)
    assert e.peak_phase in ("backward start", "recompute, last block", "recompute, first block", "optimizer step")
    assert e.detail["block_inputs"] == TINY.n_layers * 8 * 64 * TINY.d_model * 4
    budget = 30 * 2**20
    assert find_max_batch_size(budget, TINY, 128, activation_checkpointing=True) > find_max_batch_size(
        budget, TINY, 128
    )


MC = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def _cli_losses(out, *flags):
    cmd = [
        sys.executable,
        "-m",
        "course_lib.train",
        "--out-dir",
        str(out),
        "--max-steps",
        "4",
        "--d-model",
        "32",
        "--n-layers",
        "2",
        "--n-heads",
        "2",
        "--n-kv-heads",
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
        "4",
        "--log-interval",
        "1",
        *flags,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("eval_loss")) for r in rows]


def test_cli_flag_gives_the_same_losses(tmp_path):
    plain = _cli_losses(tmp_path / "plain")
    ac = _cli_losses(tmp_path / "ac", "--activation-checkpointing")
    assert len(plain) == 4 and ac == plain
    cfg = json.loads((tmp_path / "ac" / "config.json").read_text())
    assert cfg["train"]["activation_checkpointing"] is True


def test_flag_may_change_across_a_resume(tmp_path):
    def tc(out, ac):
        return TrainConfig(
            max_steps=8,
            batch_size=4,
            seq_len=32,
            warmup_steps=2,
            eval_interval=4,
            eval_batches=1,
            log_interval=4,
            ckpt_interval=4,
            out_dir=str(out),
            tensorboard=False,
            activation_checkpointing=ac,
        )

    ref = Trainer(ModelConfig(**MC), tc(tmp_path / "a", False), console=False)
    ref.fit()

    class Crash(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(ModelConfig(**MC), tc(tmp_path / "b", True), callbacks=[Crash()], console=False).fit()
    resumed = Trainer(ModelConfig(**MC), tc(tmp_path / "b", False), console=False)
    assert resumed.step == 4 and resumed._resume_changes == {}  # a free setting: no warning
    resumed.fit()
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_step_timer_returns_seconds_per_step():
    timer = step_timer(TINY, 2, 16, "bf16", activation_checkpointing=True, steps=1)
    first, second = timer(), timer()
    assert first > 0 and second > 0
