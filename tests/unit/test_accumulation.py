"""Gradient accumulation: N micro-batches of B == one batch of N*B; a crash mid-cycle resumes
at the cycle start and ends bitwise-identical. (With DDP: tests/reliability/test_ddp_torchrun.py.)

Tolerance for accumulation vs one big batch: atol 1e-5 / rtol 1e-4 on parameters after 6 AdamW
steps. The two compute the same mean gradient; only the summation order differs (N partial
backward passes added into .grad vs one), i.e. fp32 rounding ~1e-7 per step.
"""

import pytest
import torch

from course_lib.config import ModelConfig, TrainConfig
from course_lib.train import Callback, ReplayDDPBatches, Trainer

MC = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def tc(out, **kw):
    base = dict(
        max_steps=6,
        batch_size=2,
        seq_len=32,
        warmup_steps=1,
        eval_interval=100,
        eval_batches=1,
        log_interval=100,
        ckpt_interval=3,
        out_dir=str(out),
        tensorboard=False,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("n", [2, 4])
def test_accumulation_equals_big_batch(tmp_path, n):
    acc = Trainer(ModelConfig(**MC), tc(tmp_path / "acc", accumulation_steps=n), console=False, save_checkpoints=False)
    acc.fit()
    big = Trainer(
        ModelConfig(**MC),
        tc(tmp_path / "big"),
        callbacks=[ReplayDDPBatches(1, n)],
        console=False,
        save_checkpoints=False,
    )
    big.fit()
    for k, a in acc.model.state_dict().items():
        b = big.model.state_dict()[k]
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), f"{k}: 最大差 {(a - b).abs().max():.3g}"
    for ha, hb in zip(acc.history, big.history, strict=True):
        assert abs(ha["loss"] - hb["loss"]) < 1e-5, "累积的损失 (loss) 应等于大批次的损失"
        assert abs(ha["grad_norm"] - hb["grad_norm"]) < 1e-4 * max(1.0, hb["grad_norm"])
    # one scheduler / optimizer step per accumulated batch, not per micro-batch
    assert acc.scheduler.last_epoch == 6 and acc.optimizer.state_dict()["state"][0]["step"] == 6
    assert acc.batches_consumed == 6 * n


def test_crash_mid_cycle_resumes_at_cycle_start(tmp_path):
    n = 3
    ref = Trainer(ModelConfig(**MC), tc(tmp_path / "ref", accumulation_steps=n), console=False)
    ref.fit()

    class Crash(Callback):  # step 4's second micro-batch: checkpoint at step 3, mid-cycle
        def on_batch(self, trainer, x, y):
            if trainer.batches_consumed == 3 * n + 2:
                raise KeyboardInterrupt
            return x, y

    part = Trainer(ModelConfig(**MC), tc(tmp_path / "b", accumulation_steps=n), callbacks=[Crash()], console=False)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed = Trainer(ModelConfig(**MC), tc(tmp_path / "b", accumulation_steps=n), console=False)
    # the partial gradient is not saved: resume from the last optimizer-step boundary
    assert resumed.step == 3 and resumed.batches_consumed == 3 * n
    resumed.fit()
    for k, a in ref.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[k]), f"{k} 恢复后不是逐位相同"
    assert [h["loss"] for h in ref.history[3:]] == [h["loss"] for h in resumed.history]
