"""Grader for exercises/ex412_ddp_setup.py: two real processes (gloo on CPU) run the learner's
setup_ddp and one training step; the parent checks what they report.

Oracle: after one DDP step, both ranks hold identical parameters, equal (allclose 1e-6: only
the all-reduce summation order differs) to one process stepping on the mean of both ranks'
gradients, i.e. on the union of both ranks' batches."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from course_lib.distributed import rendezvous_store

EX = "ex412_ddp_setup"

WORKER = textwrap.dedent(r"""
    import importlib.util, json, os, sys
    import torch, torch.distributed as dist
    from torch.utils.data import TensorDataset, DistributedSampler
    from torch.nn.parallel import DistributedDataParallel
    spec = importlib.util.spec_from_file_location("ex", sys.argv[1])
    ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = TensorDataset(torch.arange(40, dtype=torch.float32).view(10, 4) / 40, torch.arange(10.).view(10, 1))
    ddp, loader, sampler = ex.setup_ddp(model, data, batch_size=2, seed=3)
    rep = {"initialized": dist.is_initialized(), "rank": dist.get_rank() if dist.is_initialized() else -1,
           "world": dist.get_world_size() if dist.is_initialized() else -1,
           "backend": dist.get_backend() if dist.is_initialized() else None,
           "is_ddp": isinstance(ddp, DistributedDataParallel),
           "is_sampler": isinstance(sampler, DistributedSampler), "loader_uses_sampler": loader.sampler is sampler,
           "drop_last": getattr(sampler, "drop_last", None)}
    sampler.set_epoch(0)
    rep["indices"] = list(iter(sampler))
    x, y = next(iter(loader))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(ddp(x), y).backward()
    opt.step()
    rep["params"] = [p.detach().flatten().tolist() for p in model.parameters()]
    rep["x"] = x.tolist(); rep["y"] = y.tolist()
    print("REPORT" + json.dumps(rep), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # torch + gloo can abort in C++ teardown at interpreter exit (SIGABRT) after a finished run:
    # the report is out, so leave without those destructors (as course_lib.train's workers do)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


def run_two(path, tmp_path):
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
                    [sys.executable, str(script), str(path)],
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
                line = [ln for ln in out.splitlines() if ln.startswith("REPORT")]
                assert p.returncode == 0 and line, f"rank {r} 的进程失败了：\n{err[-2000:]}"
                reps.append(json.loads(line[0][6:]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    return reps


def test_two_process_gloo_setup(impl, tmp_path):
    mod = impl(EX)
    reps = run_two(mod.__file__, tmp_path)
    for r, rep in enumerate(reps):
        assert rep["initialized"] and rep["rank"] == r and rep["world"] == 2, (
            f"rank {r}: 进程组应从环境变量初始化为 rank={r}, world_size=2，实际 {rep['rank']}/{rep['world']}"
        )
        assert rep["backend"] == "gloo", f"CPU 上应使用 gloo 后端，实际 {rep['backend']}"
        assert rep["is_ddp"], "返回的模型应是 DistributedDataParallel"
        assert rep["is_sampler"] and rep["loader_uses_sampler"], "DataLoader 应使用返回的 DistributedSampler"
        assert rep["drop_last"] is True, "sampler 应设置 drop_last=True（否则会用重复样本补齐）"
    a, b = reps[0]["indices"], reps[1]["indices"]
    assert not set(a) & set(b), f"两个 rank 拿到了相同的样本：{sorted(set(a) & set(b))}"
    assert len(a) == len(b) == 5, f"10 个样本分给 2 个 rank，每个应有 5 个，实际 {len(a)}、{len(b)}"
    assert reps[0]["params"] == reps[1]["params"], "一步之后两个 rank 的参数不同：梯度没有同步 (all-reduce)"
    # oracle: one process, one SGD step on the union of both ranks' batches
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    x = torch.tensor(reps[0]["x"] + reps[1]["x"])
    y = torch.tensor(reps[0]["y"] + reps[1]["y"])
    torch.nn.functional.mse_loss(m(x), y).backward()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    want = [p.detach().flatten().tolist() for p in m.parameters()]
    for g, w in zip(reps[0]["params"], want, strict=True):
        assert torch.allclose(torch.tensor(g), torch.tensor(w), atol=1e-6), (
            f"DDP 一步后的参数应等于单进程在两个 rank 批次合并后的一步：期望 {w}，实际 {g}"
        )
