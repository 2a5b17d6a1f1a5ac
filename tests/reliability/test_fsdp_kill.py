"""SIGKILL inside every phase of a sharded (DCP) checkpoint save, then resume.

One process with ``strategy="fsdp"`` writes the same sharded checkpoints as N ranks (one shard;
the 2-rank case, rank 1 killed with its shard on disk, is in test_fsdp_torchrun.py). A lineage of
runs is killed once in each phase of ``ShardedCheckpointManager.save``, at successive save steps,
and resumed each time. Required: a kill before the rename leaves the previous checkpoint as the
latest and the run resumes from it; after the rename, from the new one; no checkpoint is ever
skipped as corrupt; every checkpoint left on disk verifies; and the final model and optimizer
are bitwise-identical (torch.equal) to an uninterrupted run's.

What this proves: a crash of the process (SIGKILL: the page cache survives) never leaves a
sharded checkpoint that counts but cannot be loaded. It does not simulate a power cut.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kill_driver  # noqa: E402

from course_lib.checkpoint import ShardedCheckpointManager  # noqa: E402
from course_lib.config import ModelConfig  # noqa: E402
from course_lib.faults import SHARDED_SAVE_PHASES  # noqa: E402
from course_lib.monitor import last_per_step, read_jsonl  # noqa: E402
from course_lib.train import Trainer  # noqa: E402

BEFORE_RENAME = {"dcp_begin", "dcp_shard_written", "dcp_saved", "dcp_trainer_written", "dcp_marker_written"}
# one kill per phase, at successive save steps (saves every CKPT_INTERVAL=2 steps)
POINTS = [f"{phase}@{2 * (i + 1)}" for i, phase in enumerate(SHARDED_SAVE_PHASES)]


def lineage(args):
    ctx, out_dir, data, points = args
    return kill_driver.lineage(ctx, out_dir, data, points, "fsdp")


def finished(out_dir, data):
    """The state a run folder ends in, read back the way a resume reads it (no training left)."""
    tr = Trainer(
        ModelConfig(**kill_driver.TINY_MODEL),
        kill_driver.train_config(str(out_dir), data, "fsdp"),
        console=False,
        save_checkpoints=False,
    )
    assert tr.step == kill_driver.MAX_STEPS
    return tr


def test_sigkill_in_every_sharded_save_phase_then_resume(tmp_path, tiny_corpus):
    assert len(POINTS) == len(SHARDED_SAVE_PHASES) and 2 * len(POINTS) < kill_driver.MAX_STEPS
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "course_lib.train", "kill_driver"])
    jobs = [(ctx, str(tmp_path / "ref"), tiny_corpus, []), (ctx, str(tmp_path / "killed"), tiny_corpus, POINTS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        ref_codes, codes = pool.map(lineage, jobs)
    assert ref_codes == [0], f"未中断的参照运行 (reference run) 失败，exit codes {ref_codes}"
    assert codes[:-1] == [-signal.SIGKILL] * len(POINTS), f"每个故障点都应以 SIGKILL 结束，实际 {codes}"
    assert codes[-1] == 0, f"最后一次恢复运行应正常结束，实际 exit code {codes[-1]}"

    out = tmp_path / "killed"
    events = read_jsonl(out / "driver_log.jsonl")
    for e, fault in zip(events[1:], POINTS, strict=True):
        phase, step = fault.split("@")
        want = int(step) - kill_driver.CKPT_INTERVAL if phase in BEFORE_RENAME else int(step)
        assert e["resumed_step"] == want, f"在 {fault} 被杀后应从 step {want} 恢复，实际 {e['resumed_step']}"
    bad = [w for e in events for w in e["warnings"] if "skipping" in w]
    assert not bad, f"恢复时跳过了损坏的 checkpoint（应为 0 次）：{bad}"
    mgr = ShardedCheckpointManager(out, verbose=False)
    for _, folder in mgr.list_complete():
        mgr.verify(folder)
    assert not list(mgr.dir.glob("*.tmp")), "killed saves' temp folders are gone after the last save"

    ref, got = finished(tmp_path / "ref", tiny_corpus), finished(out, tiny_corpus)
    for (k, a), b in zip(ref.model.state_dict().items(), got.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{k} 与未中断运行不是逐位相同 (bitwise-identical)"
    for i, (sa, sb) in enumerate(
        zip(ref.optimizer.state_dict()["state"].values(), got.optimizer.state_dict()["state"].values(), strict=True)
    ):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"optimizer state {i}/{key} 不是逐位相同"
    assert ref.batches_consumed == got.batches_consumed
    ref_losses = [r["loss"] for r in last_per_step(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))]
    assert [r["loss"] for r in last_per_step(read_jsonl(out / "metrics.jsonl"))] == ref_losses
