"""Kill-and-resume: SIGKILL a training run at >= 20 random points (inside steps and inside
checkpoint saves), resume each time, and require the final state to be bitwise-identical
(torch.equal on every tensor) to an uninterrupted run, with zero corrupt or skipped loads.

Runs are real processes started from a forkserver that has already imported torch and
course_lib (a cold `python` start costs ~3 s of imports; a fork costs ~0.05 s), so 24 kill
points fit in well under a minute on 2 cores. Kill points are drawn from a seeded RNG and
printed, so a failure is reproducible.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kill_driver  # noqa: E402

from course_lib.checkpoint import CheckpointManager  # noqa: E402
from course_lib.faults import SAVE_PHASES  # noqa: E402
from course_lib.monitor import last_per_step, read_jsonl  # noqa: E402

SEED = 4001
LINEAGES, KILLS_PER_LINEAGE = 4, 6
ROOT = Path(__file__).resolve().parents[2]


def make_corpus(path: Path) -> str:
    # Real text that every checkout has: the course library's own sources.
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "course_lib").glob("*.py")))
    path.write_text(text[:60_000], encoding="utf-8")
    return str(path)


def draw_kill_points(rng: random.Random) -> list[list[str]]:
    """Per lineage: kill points at distinct, increasing steps (a later point must be reachable
    after resuming from the checkpoint before it)."""
    lineages = []
    for _ in range(LINEAGES):
        steps = sorted(rng.sample(range(1, kill_driver.MAX_STEPS + 1), KILLS_PER_LINEAGE))
        points = []
        for s in steps:
            phases = list(kill_driver.STEP_PHASES)
            if s % kill_driver.CKPT_INTERVAL == 0 or s == kill_driver.MAX_STEPS:
                phases += list(SAVE_PHASES) * 2  # saves are where crashes corrupt things: weight them
            points.append(f"{rng.choice(phases)}@{s}")
        lineages.append(points)
    return lineages


def all_tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from all_tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from all_tensors(v, f"{prefix}/{i}")


def lineage_job(args):
    """Runs in a pool thread: one lineage = a chain of processes, each killed at its point."""
    ctx, out_dir, data, points = args
    return kill_driver.lineage(ctx, out_dir, data, points)


def test_kill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = make_corpus(tmp_path / "corpus.txt")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "course_lib.train", "kill_driver"])
    lineages = draw_kill_points(random.Random(SEED))
    flat = [p for lin in lineages for p in lin]
    n_save = sum(p.split("@")[0].startswith("save") for p in flat)
    print(
        f"\nkill points (seed {SEED}): {len(flat)} in total, {n_save} inside checkpoint saves, "
        f"{len(flat) - n_save} inside training steps"
    )
    for i, lin in enumerate(lineages):
        print(f"  lineage {i}: {' -> '.join(lin)}")
    assert len(flat) >= 20 and n_save >= 5 and len(flat) - n_save >= 5

    jobs = [(ctx, str(tmp_path / "ref"), data, [])]
    jobs += [(ctx, str(tmp_path / f"lineage{i}"), data, lin) for i, lin in enumerate(lineages)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lineage_job, jobs))

    ref_codes, lineage_codes = results[0], results[1:]
    assert ref_codes == [0], f"未中断的参照运行 (reference run) 失败，exit codes {ref_codes}"
    for i, codes in enumerate(lineage_codes):
        assert codes[:-1] == [-signal.SIGKILL] * KILLS_PER_LINEAGE, (
            f"lineage {i}: 每个故障点都应以 SIGKILL 结束 (exit code -9)，实际 exit codes {codes}"
        )
        assert codes[-1] == 0, f"lineage {i}: 最后一次恢复运行应正常结束，实际 exit code {codes[-1]}"

    ref_mgr = CheckpointManager(tmp_path / "ref", verbose=False)
    ref_state = ref_mgr.load(ref_mgr.path_for(kill_driver.MAX_STEPS))
    ref_tensors = dict(all_tensors({k: ref_state[k] for k in ("model", "optimizer", "scheduler", "rng", "data")}))
    ref_losses = [r["loss"] for r in last_per_step(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))]
    assert len(ref_losses) == kill_driver.MAX_STEPS

    for i, points in enumerate(lineages):
        out = tmp_path / f"lineage{i}"
        events = read_jsonl(out / "driver_log.jsonl")
        resumed = [e["resumed_step"] for e in events]
        print(f"  lineage {i}: resumed at steps {resumed}")
        bad_loads = [w for e in events for w in e["warnings"] if "skipping" in w or "checkpoint" in w.lower()]
        assert not bad_loads, f"lineage {i}: 恢复时出现了损坏/被跳过的 checkpoint（应为 0 次）：{bad_loads}"
        # each resume starts from the newest checkpoint at or before the kill point
        for e, fault in zip(events[1:], points, strict=True):
            phase, step = fault.split("@")
            step = int(step)
            assert e["resumed_step"] <= step, (fault, e)
            assert step - e["resumed_step"] <= kill_driver.CKPT_INTERVAL, (fault, e)
        mgr = CheckpointManager(out, verbose=False)
        for _, folder in mgr.list_complete():
            mgr.verify(folder)  # every checkpoint left on disk is complete and intact
        state = mgr.load(mgr.path_for(kill_driver.MAX_STEPS))
        got = dict(all_tensors({k: state[k] for k in ("model", "optimizer", "scheduler", "rng", "data")}))
        assert got.keys() == ref_tensors.keys()
        for name, t in ref_tensors.items():
            assert torch.equal(got[name], t), (
                f"lineage {i}（故障点 {points}）：{name} 与未中断运行不是逐位相同 (bitwise-identical)"
            )
        assert state["step"] == ref_state["step"] and state["data"] == ref_state["data"]
        losses = [r["loss"] for r in last_per_step(read_jsonl(out / "metrics.jsonl"))]
        assert losses == ref_losses, f"lineage {i}: 恢复后的 loss 曲线与未中断运行不同"
