"""SFT keeps the stage-4 guarantees: SIGKILL an SFT run (BPE tokenizer, packed conversations,
`--init` from an artefact) inside steps and inside checkpoint saves, resume each time, and require
the final state to be bitwise-identical to an uninterrupted SFT run (same driver as
test_kill_resume.py, with TrainConfig overrides ``task="sft", init=...``)."""

from __future__ import annotations

import json
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

SEED = 4023
LINEAGES, KILLS_PER_LINEAGE = 2, 4


def make_sft_setup(tmp: Path) -> dict:
    from course_lib.config import ModelConfig
    from course_lib.export import save_inference
    from course_lib.model import DIYModel
    from course_lib.tokenizer import train_bpe

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"add {i} and {i + 1}"},
                {"role": "assistant", "content": f"{i} + {i + 1} = {2 * i + 1}"},
            ]
        }
        for i in range(60)
    ]
    rows += [{"prompt": f"name {i}", "response": "def " + "f" * (1 + i % 5) + "(): pass"} for i in range(40)]
    data = tmp / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tok = train_bpe([data.read_text()] * 3, vocab_size=320)
    torch.manual_seed(0)
    init = DIYModel(ModelConfig(**{**kill_driver.TINY_MODEL, "vocab_size": tok.vocab_size}))
    save_inference(init, tmp / "init", tok)
    return {"task": "sft", "init": str(tmp / "init"), "seq_len": 64}, str(data)


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
    ctx, out_dir, data, points, overrides = args
    return kill_driver.lineage(ctx, out_dir, data, points, overrides=overrides)


def test_sft_kill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    overrides, data = make_sft_setup(tmp_path)
    rng = random.Random(SEED)
    lineages = []
    for _ in range(LINEAGES):
        steps = sorted(rng.sample(range(1, kill_driver.MAX_STEPS + 1), KILLS_PER_LINEAGE))
        pts = []
        for s in steps:
            phases = list(kill_driver.STEP_PHASES)
            if s % kill_driver.CKPT_INTERVAL == 0 or s == kill_driver.MAX_STEPS:
                phases += list(SAVE_PHASES)
            pts.append(f"{rng.choice(phases)}@{s}")
        lineages.append(pts)
    print(f"\nSFT kill points (seed {SEED}): " + " | ".join(" -> ".join(p) for p in lineages))

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "course_lib.train", "kill_driver"])
    jobs = [(ctx, str(tmp_path / "ref"), data, [], overrides)]
    jobs += [(ctx, str(tmp_path / f"lineage{i}"), data, p, overrides) for i, p in enumerate(lineages)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lineage_job, jobs))
    assert results[0] == [0], f"未中断的 SFT 参照运行失败，exit codes {results[0]}"
    for i, codes in enumerate(results[1:]):
        assert codes == [-signal.SIGKILL] * KILLS_PER_LINEAGE + [0], (
            f"lineage {i}: 每个故障点都应以 SIGKILL 结束、最后一次正常结束，实际 exit codes {codes}"
        )

    ref_mgr = CheckpointManager(tmp_path / "ref", verbose=False)
    ref_state = ref_mgr.load(ref_mgr.path_for(kill_driver.MAX_STEPS))
    assert ref_state["config"]["train"]["task"] == "sft" and ref_state["tokenizer"]["type"] == "bpe"
    keys = ("model", "optimizer", "scheduler", "rng", "data")
    ref_tensors = dict(all_tensors({k: ref_state[k] for k in keys}))
    ref_losses = [r["loss"] for r in last_per_step(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))]
    for i, points in enumerate(lineages):
        out = tmp_path / f"lineage{i}"
        events = read_jsonl(out / "driver_log.jsonl")
        print(f"  lineage {i}: {points}, resumed at steps {[e['resumed_step'] for e in events]}")
        assert not [w for e in events for w in e["warnings"] if "skipping" in w], (
            f"lineage {i}: 恢复时跳过了损坏的 checkpoint"
        )
        mgr = CheckpointManager(out, verbose=False)
        state = mgr.load(mgr.path_for(kill_driver.MAX_STEPS))
        got = dict(all_tensors({k: state[k] for k in keys}))
        assert got.keys() == ref_tensors.keys()
        for name, t in ref_tensors.items():
            assert torch.equal(got[name], t), f"lineage {i}（故障点 {points}）：{name} 与未中断的 SFT 运行不是逐位相同"
        assert state["data"] == ref_state["data"]
        assert [r["loss"] for r in last_per_step(read_jsonl(out / "metrics.jsonl"))] == ref_losses
