"""Grader for exercises/ex412_ddp_by_hand.py: two real processes (gloo on CPU), each with its own
data. Oracle: torch's DistributedDataParallel on the same model, data and SGD steps.
Tolerance atol 1e-6: the same sums in fp32 (2 ranks: a + b is exact in either order); only
DDP's bucketed division by the world size may round differently. SGD, not Adam: Adam is nearly
scale-invariant and would hide a sum that forgot to divide by the world size."""

import json
import os
import subprocess
import sys
import textwrap

from course_lib.distributed import rendezvous_store

EX = "ex412_ddp_by_hand"
STEPS = 3

WORKER = textwrap.dedent(r"""
    import importlib.util, json, os, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    spec = importlib.util.spec_from_file_location("ex", sys.argv[1])
    ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def batch(step):
        g = torch.Generator().manual_seed(100 * step + rank)        # different data per rank
        return torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)

    def train(model, sync, steps):
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for s in range(steps):
            x, y = batch(s)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if sync is not None:
                sync(model)
            opt.step()
        return [p.detach().flatten().tolist() for p in model.parameters()]

    rep = {"rank": rank}
    what = sys.argv[2]
    if what == "manual":
        rep["got"] = train(make(), ex.average_gradients, int(sys.argv[3]))
    else:
        m = make()
        handles = ex.install_grad_hooks(m)
        rep["handles"] = len(handles) if isinstance(handles, (list, tuple)) else -1
        rep["n_params"] = sum(1 for p in m.parameters() if p.requires_grad)
        rep["got"] = train(m, None, int(sys.argv[3]))
    ddp_model = make()
    rep["want"] = train(DistributedDataParallel(ddp_model), None, int(sys.argv[3]))
    print("REPORT" + json.dumps(rep), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # torch + gloo can abort in C++ teardown at interpreter exit (SIGABRT) after a finished run:
    # the report is out, so leave without those destructors (as course_lib.train's workers do)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


def run_two(path, tmp_path, what):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with rendezvous_store() as rdzv:  # the port is bound before the ranks start: no race
        procs = []
        for r in range(2):
            env = dict(
                os.environ,
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE="2",
                **rdzv,
                OMP_NUM_THREADS="1",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(path), what, str(STEPS)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        reps = []
        try:
            for r, p in enumerate(procs):
                out, err = p.communicate(timeout=120)
                line = [x for x in out.splitlines() if x.startswith("REPORT")]
                assert p.returncode == 0 and line, f"rank {r} 的进程失败了：\n{err[-1500:]}"
                reps.append(json.loads(line[0][6:]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return reps


def compare(reps, how):
    a, b = reps[0]["got"], reps[1]["got"]
    assert a == b, f"{how}：两个 rank 的参数不同：梯度没有在进程间同步 (all_reduce)"
    for rep in reps:
        for i, (g, w) in enumerate(zip(rep["got"], rep["want"], strict=True)):
            diff = max(abs(a - b) for a, b in zip(g, w, strict=True))
            assert diff <= 1e-6, (
                f"{how}：rank {rep['rank']} 训练 {STEPS} 步后第 {i} 个参数与 DistributedDataParallel 差 {diff:.3g}"
                f"（允许 1e-6）。梯度应是各进程的 **平均**：all_reduce 求和之后还要除以进程数"
            )


def test_average_after_backward_matches_ddp(impl_path, tmp_path):
    compare(run_two(impl_path(EX), tmp_path, "manual"), "average_gradients")


def test_hooks_during_backward_match_ddp(impl_path, tmp_path):
    reps = run_two(impl_path(EX), tmp_path, "hooks")
    for rep in reps:
        assert rep["handles"] == rep["n_params"], (
            f"install_grad_hooks 应返回每个可训练参数一个句柄的列表：期望 {rep['n_params']} 个，实际 {rep['handles']}"
        )
    compare(reps, "install_grad_hooks")
