"""FSDP2 launched the standard way (``python -m course_lib.launch ... -m course_lib.train --strategy
fsdp``) on CPU with gloo: equivalence, measured per-rank memory, resharding 2 -> 1 and 1 -> 2,
and a SIGKILL inside a sharded save.

Reference for "the same parameters" is the one of the DDP test (test_ddp_torchrun.py): one
process reading, at every optimizer step, the concatenation of every rank's and every
micro-step's batch (``ReplayDDPBatches``), with the same tolerance (atol 2e-5 / rtol 1e-4 after
8 AdamW steps; FSDP reduce-scatters instead of all-reducing, which only reorders fp32 additions).

Resharding: a run of W ranks x batch B and a run of W' ranks x batch B' with B*W = B'*W' read
the same samples at every step (``data.StreamingTokenDataset``: together the ranks' batch j is
``perm[j*B*W:(j+1)*B*W]``), so a run resumed on another number of ranks must follow the
uninterrupted run's loss curve step for step (tolerance 1e-5 relative: only the order of
additions differs) and end at the same global sample count.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torchrun_util import flags, run  # tests/reliability is on sys.path (pytest's rootdir-less import)

from course_lib.checkpoint import ShardedCheckpointManager, safe_torch_load
from course_lib.cli import build_parser, configs_from_args
from course_lib.config import ModelConfig
from course_lib.data import StreamingTokenDataset
from course_lib.distributed import torchrun_command
from course_lib.faults import fault_env
from course_lib.fsdp import load_full_model_state
from course_lib.lab.measure import rank_state_run
from course_lib.monitor import last_per_step, read_jsonl
from course_lib.train import Callback, ReplayDDPBatches, Trainer

ATOL, RTOL = 2e-5, 1e-4
LOSS_RTOL = 1e-5
STEPS, ACC, B2 = 8, 2, 4  # 2 ranks x batch 4 x 2 micro-steps == 1 process x batch 8 x 2 micro-steps
MODEL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)


def cli_args(out, **kw):
    a = dict(
        max_steps=STEPS,
        **MODEL,
        seq_len=32,
        batch_size=B2,
        warmup_steps=2,
        eval_interval=100,
        eval_batches=1,
        log_interval=1,
        ckpt_interval=4,
        device="cpu",
        seed=7,
        out_dir=str(out),
        strategy="fsdp",
        accumulation_steps=ACC,
    )
    a.update(kw)
    return flags(a)


def in_process_trainer(out, callbacks=(), **kw):
    mc, tc = configs_from_args(build_parser().parse_args(cli_args(out, **kw)))
    return Trainer(mc, tc, callbacks=list(callbacks), console=False)


def final_model(out):
    mgr = ShardedCheckpointManager(out, verbose=False)
    model, state = load_full_model_state(mgr.latest())
    return model.state_dict(), state


def losses(out):
    return {r["step"]: r["loss"] for r in last_per_step(read_jsonl(out / "metrics.jsonl"))}


def assert_close_params(ref_sd, got_sd):
    worst = 0.0
    for k, a in ref_sd.items():
        b = got_sd[k]
        worst = max(worst, (a - b).abs().max().item())
        assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), (
            f"参数 {k}：最大差 {(a - b).abs().max().item():.3g}，超出 atol={ATOL}, rtol={RTOL}"
        )
    return worst


def assert_same_losses(ref: dict, got: dict, steps):
    for s in steps:
        assert got[s] == pytest.approx(ref[s], rel=LOSS_RTOL), (
            f"step {s}：恢复后的 loss {got[s]:.6f} 与未中断运行的 {ref[s]:.6f} 不同"
        )


def copy_checkpoint(src_out, dst_out, step):
    (dst_out / "checkpoints").mkdir(parents=True)
    name = f"step_{step:08d}"
    shutil.copytree(src_out / "checkpoints" / name, dst_out / "checkpoints" / name)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One uninterrupted 2-rank FSDP run with gradient accumulation, checkpoints at 4 and 8."""
    out = tmp_path_factory.mktemp("fsdp2")
    lines = run(torchrun_command(cli_args(out), nproc_per_node=2))
    assert any("world size 2 | strategy fsdp" in ln for ln in lines), "\n".join(lines[-20:])
    return out


def test_two_rank_fsdp_equals_one_process_on_the_combined_batch(two_rank_run, tmp_path):
    sd, state = final_model(two_rank_run)
    assert state["step"] == STEPS and state["world_size"] == 2
    ref = in_process_trainer(tmp_path / "ref", [ReplayDDPBatches(2, ACC)], accumulation_steps=1, strategy="ddp")
    init = {k: v.clone() for k, v in ref.model.state_dict().items()}
    ref.save_checkpoints = False
    ref.fit()
    worst = assert_close_params(ref.model.state_dict(), sd)
    print(f"max |FSDP(2 ranks) - single process| = {worst:.3g}")
    moved = max((init[k] - sd[k]).abs().max().item() for k in init)
    assert moved > 1e-3, f"参数几乎没变 (max change {moved:.3g})：训练没有发生"


def test_activation_checkpointing_under_fsdp_gives_the_same_losses(two_rank_run, tmp_path):
    """Per-block activation checkpointing inside FSDP units (wrapped first, then sharded, as in
    torchtitan): the recomputed forward all-gathers again, and the training is unchanged."""
    out = tmp_path / "fsdp2-ac"
    run(torchrun_command(cli_args(out) + ["--activation-checkpointing"], nproc_per_node=2))
    ref, got = losses(two_rank_run), losses(out)
    assert_same_losses(ref, got, range(1, STEPS + 1))


def test_per_rank_state_is_half_of_ddp():
    """Measured, not estimated: the bytes of the tensors each rank holds after one AdamW step."""
    run = rank_state_run(ModelConfig(**MODEL), world_size=2, strategies=("ddp", "fsdp"))
    m = {s: run[s]["ranks"] for s in ("ddp", "fsdp")}
    for r in range(2):
        ddp, fsdp = m["ddp"][r], m["fsdp"][r]
        for key in ("params", "grads", "optimizer"):
            ratio = fsdp[key] / ddp[key]
            assert 0.45 <= ratio <= 0.55, f"rank {r} {key}: FSDP/DDP = {ratio:.3f}，应约为 1/world_size = 0.5"
    assert m["ddp"][0] == m["ddp"][1], "DDP: every rank holds the same full copy"
    assert sum(d["params"] for d in m["fsdp"]) == m["ddp"][0]["params"], "FSDP shards add up to one model"


class RecordSamples(Callback):
    """The sample indices of every micro-batch a (single-process) run reads, per optimizer step."""

    def __init__(self):
        self.by_step: dict = {}

    def on_batch(self, trainer, x, y):
        idx = trainer.train_data.batch_indices(trainer.batches_consumed - 1)
        self.by_step.setdefault(trainer.step + 1, []).extend(idx.tolist())
        return x, y


def test_resume_two_ranks_on_one_process(two_rank_run, tmp_path):
    """2 -> 1: the 2-rank run's step-4 checkpoint, resumed by one process with batch 8."""
    copy_checkpoint(two_rank_run, tmp_path, 4)
    rec = RecordSamples()
    tr = in_process_trainer(tmp_path, [rec], batch_size=2 * B2)
    assert tr.step == 4 and tr.resumed_from is not None
    tr.fit()
    ref = losses(two_rank_run)
    assert_same_losses(ref, {h["step"]: h["loss"] for h in tr.history}, range(5, STEPS + 1))
    sd, _ = final_model(two_rank_run)
    assert_close_params(sd, tr.model.state_dict())
    # sample accounting: step by step exactly the samples the 2 ranks read, none twice, none skipped
    ranks = [StreamingTokenDataset(tr.train_data.tokens, 32, B2, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for step in range(5, STEPS + 1):
        expected = [i for m in range(ACC) for d in ranks for i in d.batch_indices((step - 1) * ACC + m).tolist()]
        assert sorted(rec.by_step[step]) == sorted(expected), f"step {step}：读到的样本与 2-rank 运行不同"
    seen = [i for s in range(5, STEPS + 1) for i in rec.by_step[s]]
    assert len(seen) == len(set(seen)) == (STEPS - 4) * ACC * 2 * B2
    state = safe_torch_load(ShardedCheckpointManager(tmp_path).latest() / "trainer.pt")
    assert state["data"]["samples_consumed"] == STEPS * ACC * 2 * B2 and state["world_size"] == 1


def test_resume_one_process_on_two_ranks(two_rank_run, tmp_path):
    """1 -> 2: an uninterrupted one-process run (batch 8) and its step-4 checkpoint resumed by 2 ranks."""
    one = in_process_trainer(tmp_path / "one", batch_size=2 * B2)
    one.fit()
    assert_same_losses(losses(two_rank_run), {h["step"]: h["loss"] for h in one.history}, range(1, STEPS + 1))
    out = tmp_path / "resumed"
    copy_checkpoint(tmp_path / "one", out, 4)
    lines = run(torchrun_command(cli_args(out), nproc_per_node=2))
    assert any("resumed from" in ln and "at step 4" in ln for ln in lines), "\n".join(lines[-20:])
    assert_same_losses({h["step"]: h["loss"] for h in one.history}, losses(out), range(5, STEPS + 1))
    sd, state = final_model(out)
    assert_close_params(one.model.state_dict(), sd)
    assert state["world_size"] == 2 and state["data"]["samples_consumed"] == STEPS * ACC * 2 * B2
    assert ShardedCheckpointManager.verify(ShardedCheckpointManager(out).latest())["world_size"] == 2


def test_sigkill_inside_a_sharded_save_resumes_from_the_previous_checkpoint(two_rank_run, tmp_path):
    """Rank 1 SIGKILLs itself once its own shard of step 8 is on disk (rank 0's shard may be too;
    DCP's .metadata, trainer.pt and the marker are not). torchrun --max-restarts=1 restarts both
    ranks; they must resume from step 4 and end bitwise-equal to the uninterrupted run."""
    out = tmp_path / "faulty"
    marker = tmp_path / "fault.marker"
    env = fault_env("dcp_shard_written", STEPS, rank=1, once=marker)
    lines = run(torchrun_command(cli_args(out), nproc_per_node=2, max_restarts=1), env=env)
    text = "\n".join(lines)
    assert marker.exists(), "故障注入 (fault injection) 没有发生"
    assert "resumed from" in text and "at step 4" in text, f"重启后没有从 step 4 恢复：\n{text[-3000:]}"
    mgr = ShardedCheckpointManager(out)
    assert [s for s, _ in mgr.list_complete()] == [4, STEPS] and not list(mgr.dir.glob("*.tmp"))
    got, _ = final_model(out)
    ref, _ = final_model(two_rank_run)
    for k, v in ref.items():
        assert torch.equal(v, got[k]), f"参数 {k} 与未中断运行不是逐位相同 (bitwise equal)"
