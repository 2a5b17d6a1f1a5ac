"""Mixed precision: bf16 autocast on CPU; fp16 with GradScaler (skips on inf, scheduler held,
clipping after unscale_, scaler state in the checkpoint and restored on resume)."""

import math

import pytest
import torch

from course_lib.config import ModelConfig, TrainConfig
from course_lib.monitor import read_jsonl
from course_lib.train import Callback, Trainer

MC = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def tc(out, **kw):
    base = dict(
        max_steps=6,
        batch_size=4,
        seq_len=32,
        warmup_steps=1,
        eval_interval=100,
        eval_batches=1,
        log_interval=100,
        ckpt_interval=3,
        out_dir=str(out),
        tensorboard=False,
        seed=5,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    f32 = Trainer(ModelConfig(**MC), tc(tmp_path / "a"), console=False, save_checkpoints=False).fit()
    b16 = Trainer(ModelConfig(**MC), tc(tmp_path / "b", dtype="bf16"), console=False, save_checkpoints=False).fit()
    d = [abs(a["loss"] - b["loss"]) for a, b in zip(f32, b16, strict=True)]
    assert max(d) > 0, "bf16 与 fp32 的损失完全相同：autocast 没有生效"
    # bf16 has 8 significant bits (relative step 2**-8 ~ 0.4%); losses ~5.5 -> within 0.1
    assert max(d) < 0.1, f"bf16 损失偏离 fp32 太多：{d}"
    assert all(h["skipped"] is False for h in b16), "bf16 不用 GradScaler，不应跳过任何一步"


class InfAt(Callback):
    """Put an inf into one gradient on the given step (1-based), and record parameters."""

    def __init__(self, step):
        self.step, self.before, self.after = step, None, None

    def on_after_backward(self, trainer):
        if trainer.step + 1 == self.step:
            p = next(trainer.model.parameters())
            p.grad.view(-1)[0] = float("inf")
            self.before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def on_step_end(self, trainer, metrics):
        if metrics["step"] == self.step:
            self.after = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_fp16_gradscaler_skips_inf_step_and_holds_scheduler(tmp_path):
    cb = InfAt(3)
    tr = Trainer(ModelConfig(**MC), tc(tmp_path, dtype="fp16", log_interval=1), callbacks=[cb], console=False)
    assert tr.scaler is not None
    scale0 = tr.scaler.get_scale()
    h = tr.fit()
    assert [x["skipped"] for x in h] == [False, False, True, False, False, False]
    assert tr.skipped_steps == 1 and h[-1]["skipped_steps"] == 1
    for k in cb.before:
        assert torch.equal(cb.before[k], cb.after[k]), f"被跳过的一步 (skipped step) 仍然改动了参数 {k}"
    # the scheduler advanced 5 times for 6 optimizer calls: the skipped one did not count
    assert tr.scheduler.last_epoch == 5
    assert h[3]["lr"] == h[2]["lr"], "跳过的一步之后学习率不应前进"
    assert tr.scaler.get_scale() == scale0 * 0.5, "遇到 inf 后 scale 应减半"
    # clipping saw real (unscaled) gradients: norms are O(1), not O(scale=65536)
    finite = [x["grad_norm"] for x in h if not x["skipped"]]
    assert all(math.isfinite(g) and g < 100 for g in finite), finite
    # with log_interval=1 every step is in metrics.jsonl: the skipped one is marked at step 3
    logged = {r["step"]: r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r}
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    assert [logged[i]["skipped"] for i in range(1, 7)] == [False, False, True, False, False, False], logged
    assert [logged[i]["skipped_steps"] for i in range(1, 7)] == [0, 0, 1, 1, 1, 1]


def test_skipped_step_count_survives_a_log_interval_that_hides_the_step(tmp_path):
    tr = Trainer(ModelConfig(**MC), tc(tmp_path, dtype="fp16", log_interval=4), callbacks=[InfAt(3)], console=False)
    tr.fit()
    logged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [4, 6], "step 3 is not a logging step"
    assert [r["skipped_steps"] for r in logged] == [1, 1], "跳过的步数 (skipped_steps) 必须累计到后面的日志里"


def test_fp16_scaler_state_is_checkpointed_and_resumed(tmp_path):
    ref = Trainer(ModelConfig(**MC), tc(tmp_path / "ref", dtype="fp16"), callbacks=[InfAt(2)], console=False)
    ref.fit()

    class Crash(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 4:
                raise KeyboardInterrupt

    part = Trainer(ModelConfig(**MC), tc(tmp_path / "b", dtype="fp16"), callbacks=[InfAt(2), Crash()], console=False)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    res = Trainer(ModelConfig(**MC), tc(tmp_path / "b", dtype="fp16"), console=False)
    assert res.step == 3
    assert res.scaler.get_scale() == ref.scaler.get_scale() == 32768.0, "GradScaler 的 scale 没有从检查点恢复"
    assert res.skipped_steps == 1
    res.fit()
    for k, a in ref.model.state_dict().items():
        assert torch.equal(a, res.model.state_dict()[k]), k
