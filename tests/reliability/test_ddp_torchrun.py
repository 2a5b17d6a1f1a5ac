"""DDP launched the standard way, on CPU with gloo: equivalence, two nodes, kill-and-restart.

Every run is a real ``torchrun ... -m course_lib.train`` subprocess (the command a learner
types), with a timeout, and ports chosen by the OS (never fixed ports).

Reference for "the same parameters": one process (``Trainer`` in this test process) that
reads, at every optimizer step, the concatenation of the batches all ranks and all
accumulation micro-steps of the DDP run read (``ReplayDDPBatches``). DDP averages the ranks'
gradients and accumulation averages the micro-steps, so both compute the gradient of the
same mean loss; only the order of floating-point additions differs (gloo's all-reduce,
per-micro-batch backward). Tolerance: atol 2e-5 / rtol 1e-4 on parameters of size ~0.02-1
after 8 AdamW steps (fp32 rounding of ~1e-7 per step, amplified by Adam's normalisation of
small gradient entries, measured max difference ~1e-6).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from torchrun_util import TIMEOUT, flags, run  # tests/reliability is on sys.path (pytest's rootdir-less import)

from course_lib.checkpoint import CheckpointManager
from course_lib.cli import build_parser, configs_from_args
from course_lib.distributed import free_port, subprocess_env, torchrun_command
from course_lib.faults import fault_env
from course_lib.train import ReplayDDPBatches, Trainer

ATOL, RTOL = 2e-5, 1e-4


def cli_args(out, **kw):
    a = dict(
        max_steps=8,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        ffn_hidden=64,
        max_seq_len=64,
        seq_len=32,
        batch_size=4,
        warmup_steps=2,
        eval_interval=100,
        eval_batches=1,
        log_interval=2,
        ckpt_interval=4,
        device="cpu",
        seed=7,
        out_dir=str(out),
    )
    a.update(kw)
    return flags(a)


def final_weights(out):
    state, path = CheckpointManager(out).load_latest()
    return state


def single_process_reference(tmp, world, acc, **kw):
    """One process on the combined batch (all ranks x all micro-steps) every step."""
    mc, tc = configs_from_args(build_parser().parse_args(cli_args(tmp, accumulation_steps=1, **kw)))
    tr = Trainer(mc, tc, callbacks=[ReplayDDPBatches(world, acc)], console=False, save_checkpoints=False)
    tr.fit()
    return tr


def assert_same_params(ref_sd, got_sd, exact=False):
    worst = 0.0
    for k, a in ref_sd.items():
        b = got_sd[k]
        if exact:
            assert torch.equal(a, b), f"参数 {k} 不是逐位相同 (bitwise equal)"
        else:
            worst = max(worst, (a - b).abs().max().item())
            assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), (
                f"参数 {k}：最大差 {(a - b).abs().max().item():.3g}，超出 atol={ATOL}, rtol={RTOL}"
            )
    return worst


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Two uninterrupted 2-rank DDP runs: without and with gradient accumulation."""
    base = tmp_path_factory.mktemp("ddp")
    out = {}
    for acc in (1, 2):
        d = base / f"acc{acc}"
        lines = run(torchrun_command(cli_args(d, accumulation_steps=acc), nproc_per_node=2))
        assert any("world size 2" in ln for ln in lines), "\n".join(lines[-20:])
        out[acc] = (d, final_weights(d))
    return out


@pytest.mark.parametrize("acc", [1, 2])
def test_two_rank_ddp_equals_one_process_on_the_combined_batch(ddp_runs, tmp_path, acc):
    d, state = ddp_runs[acc]
    assert state["step"] == 8 and state["world_size"] == 2
    ref = single_process_reference(tmp_path, world=2, acc=acc)
    worst = assert_same_params(ref.model.state_dict(), state["model"])
    print(f"acc={acc}: max |DDP - single| = {worst:.3g}")
    # and the model actually moved (the comparison is not between two initialisations)
    init = Trainer(
        *configs_from_args(build_parser().parse_args(cli_args(tmp_path / "init"))),
        console=False,
        save_checkpoints=False,
    ).model.state_dict()
    moved = max((init[k] - state["model"][k]).abs().max().item() for k in init)
    assert moved > 1e-3, f"参数几乎没变 (max change {moved:.3g})：训练没有发生"


def test_only_rank0_writes(ddp_runs):
    d, _ = ddp_runs[1]
    files = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert files == ["step_00000004", "step_00000008"], files
    lines = (d / "metrics.jsonl").read_text().splitlines()
    steps = [int(ln.split('"step": ')[1].split(",")[0]) for ln in lines]
    assert steps == sorted(set(steps)), f"metrics.jsonl 里有重复的 step（不止一个 rank 在写日志）：{steps}"


def _port_taken(output: str) -> bool:
    """Did node 0's agent fail to bind --master-port (another process took it after free_port)?"""
    return "EADDRINUSE" in output or "address already in use" in output.lower()


def _two_nodes(out, env):
    """Both nodes on a fresh free port; ``None`` if node 0 could not bind it (node 1 is killed then)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            torchrun_command(cli_args(out), nproc_per_node=1, nnodes=2, node_rank=r, master_port=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    outs = []
    try:
        for p in procs:  # node 0 first: it hosts the rendezvous store on the port
            outs.append(p.communicate(timeout=TIMEOUT)[0])
            if p.returncode != 0 and _port_taken(outs[-1]):
                return None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return procs, outs


def test_two_nodes_on_loopback(ddp_runs, tmp_path):
    """Two torchrun invocations (static rendezvous: --nnodes=2 --node-rank=0/1 --master-addr/port),
    one process each, form one world of 2 and give bitwise the same weights as one node x 2.

    The static form needs the port before node 0 binds it (free_port): if another process (a
    parallel test worker) takes it in between, node 0 fails with EADDRINUSE and the pair is
    started again on another port."""
    out = tmp_path / "two_nodes"
    env = subprocess_env({"OMP_NUM_THREADS": "1", "COURSE_QUICK": "1"})
    for _attempt in range(3):
        got = _two_nodes(out, env)
        if got is not None:
            break
        shutil.rmtree(out, ignore_errors=True)
    else:
        pytest.fail("node 0 could not bind a free --master-port three times")
    procs, outs = got
    for r, (p, o) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"node {r} 失败：\n{o[-3000:]}"
    assert "world size 2" in outs[0] and "world size 2" not in outs[1], "只有 node 0 的 rank 0 应该打印日志"
    assert_same_params(ddp_runs[1][1]["model"], final_weights(out)["model"], exact=True)


def test_killed_worker_restarts_and_finishes_identically(ddp_runs, tmp_path):
    """rank 1 SIGKILLs itself after step 6 (accumulation 2; last checkpoint: step 4); torchrun
    --max-restarts=1 restarts both workers, they resume from step 4 and must end bitwise-equal
    to the uninterrupted run."""
    out = tmp_path / "faulty"
    marker = tmp_path / "fault.marker"
    env = fault_env("after_step", 6, rank=1, once=marker)
    lines = run(torchrun_command(cli_args(out, accumulation_steps=2), nproc_per_node=2, max_restarts=1), env=env)
    text = "\n".join(lines)
    assert marker.exists(), "故障注入 (fault injection) 没有发生"
    assert "resumed from" in text and "at step 4" in text, f"重启后没有从 step 4 恢复：\n{text[-3000:]}"
    assert_same_params(ddp_runs[2][1]["model"], final_weights(out)["model"], exact=True)
