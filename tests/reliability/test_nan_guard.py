"""NaN/Inf is caught on the step where it appears, training stops with a message naming the
step and the likely causes, and no non-finite weight ever reaches a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.checkpoint import CheckpointManager
from course_lib.config import ModelConfig, TrainConfig
from course_lib.monitor import NonFiniteError, check_finite
from course_lib.train import Callback, Trainer

MC = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def tc(out, data, **kw):
    base = dict(
        data=data,
        max_steps=12,
        batch_size=4,
        seq_len=32,
        warmup_steps=2,
        eval_interval=100,
        eval_batches=1,
        log_interval=1,
        ckpt_interval=2,
        keep_last=10,
        out_dir=str(out),
        tensorboard=False,
        val_fraction=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


class PoisonGrad(Callback):
    """After backward of step ``at``, put a NaN into one gradient (a bad batch / overflow)."""

    def __init__(self, at: int, value: float = float("nan")):
        self.at, self.value = at, value

    def on_after_backward(self, trainer):
        if trainer.step + 1 == self.at:
            next(p for p in trainer.model.parameters() if p.grad is not None).grad.view(-1)[0] = self.value


class PoisonWeights(Callback):
    """Before the forward of step ``at``, make a weight infinite: the loss itself goes non-finite."""

    def __init__(self, at: int):
        self.at = at

    def on_batch(self, trainer, x, y):
        if trainer.step + 1 == self.at:
            with torch.no_grad():
                trainer.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
        return x, y


def all_checkpoints_finite(out) -> list[int]:
    mgr = CheckpointManager(out, verbose=False)
    steps = []
    for step, folder in mgr.list_complete():
        state = mgr.load(folder)
        for name, t in state["model"].items():
            assert torch.isfinite(t).all(), f"checkpoint {folder} 里的参数 {name} 含有 NaN/Inf"
        steps.append(step)
    return steps


@pytest.mark.parametrize(
    "poison,value", [(PoisonGrad, float("nan")), (PoisonGrad, float("inf")), (PoisonWeights, None)]
)
def test_nonfinite_detected_on_the_step_it_happens(tmp_path, tiny_corpus, poison, value):
    at = 7
    cb = poison(at, value) if value is not None else poison(at)
    trainer = Trainer(ModelConfig(**MC), tc(tmp_path, tiny_corpus), callbacks=[cb], console=False)
    with pytest.raises(NonFiniteError) as e:
        trainer.fit()
    msg = str(e.value)
    assert f"step {at}" in msg, f"错误信息应指出出问题的 step {at}：{msg}"
    assert "learning rate" in msg and "clipping" in msg, f"错误信息应列出可能的原因：{msg}"
    assert [h["step"] for h in trainer.history] == list(range(1, at)), "应在出问题的那一步停下"
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in trainer.history)
    steps = all_checkpoints_finite(tmp_path)
    assert steps == [2, 4, 6], f"只应有 NaN 之前的 checkpoint，实际 {steps}"
    # the weights in memory were not updated by the bad step either
    for name, p in trainer.model.named_parameters():
        if poison is PoisonGrad:
            assert torch.isfinite(p).all(), name


def test_huge_lr_stops_at_first_nonfinite_step(tmp_path, tiny_corpus):
    # lr = 1e4 without clipping: the weights blow up within a few steps.
    cfg = tc(
        tmp_path,
        tiny_corpus,
        lr=1e4,
        min_lr=0.0,
        warmup_steps=0,
        grad_clip=0.0,
        max_steps=40,
        schedule="constant",
        ckpt_interval=1,
        keep_last=100,
    )
    trainer = Trainer(ModelConfig(**MC), cfg, console=False)
    with pytest.raises(NonFiniteError) as e:
        trainer.fit()
    bad_step = len(trainer.history) + 1
    assert f"step {bad_step}" in str(e.value)
    # every checkpoint on disk is finite, whatever the optimizer did to the weights
    steps = all_checkpoints_finite(tmp_path)
    assert max(steps) <= bad_step - 1


def test_save_refuses_nonfinite_weights(tmp_path, tiny_corpus):
    trainer = Trainer(ModelConfig(**MC), tc(tmp_path, tiny_corpus, max_steps=2), console=False)
    trainer.fit()
    with torch.no_grad():
        trainer.model.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to save"):
        trainer.save_checkpoint()
    all_checkpoints_finite(tmp_path)


def test_check_finite_message():
    check_finite(3, loss=1.0, grad_norm=2.0)
    with pytest.raises(NonFiniteError, match=r"step 5: loss=nan"):
        check_finite(5, loss=float("nan"))
    with pytest.raises(NonFiniteError, match=r"grad_norm=inf"):
        check_finite(5, loss=1.0, grad_norm=float("inf"))
