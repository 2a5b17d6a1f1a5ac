#!/usr/bin/env python3
"""Every GPU claim of the course, checked in one prepared run (``make gpu-check``, <= 8 minutes).

One line per item: ``[PASS]``, ``[FAIL]`` or ``[SKIP]`` with the figure or the reason. On a CUDA
machine it then writes the GPU section of BENCHMARKS.md (device, torch / CUDA versions, one row per
item). Items, in order:

* training steps: fp32, bf16 autocast, fp16 + GradScaler (a forced overflow step is skipped and
  the scale backs off), activation checkpointing (same gradients, less memory);
* exact resume after a SIGKILL (``python -m course_lib.train`` + ``COURSE_FAULT``, the library's
  own kill switch), compared tensor by tensor with an uninterrupted run;
* the memory estimate against ``torch.cuda.max_memory_allocated`` for 3 sizes (+-10%), and the
  largest-batch search measured against its budget;
* distributed: DDP and FSDP2 over nccl with >= 2 GPUs; with one GPU, one nccl rank plus two gloo
  ranks exchanging CUDA tensors (DDP on gloo, CUDA parameters);
* decode: cache vs no cache, batch scaling, compiled static-cache decode with and without CUDA
  graphs (``mode="reduce-overhead"``), int8 / int4 on the CUDA kernels torch offers, bitsandbytes
  int8 and NF4 if it is installed, MBU against a bandwidth probe of this device;
* the engine and the OpenAI-compatible server on the device; every notebook in quick mode (nbval).

``--dry-run`` runs the same code on the CPU with tiny sizes and reports each CUDA-only item as
skipped, naming it (tests/unit/test_gpu_check.py runs it, so the script cannot rot)::

    python bench/gpu_check.py             # on a CUDA machine; writes BENCHMARKS.md's GPU section
    python bench/gpu_check.py --dry-run   # anywhere, ~1 minute on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
BUDGET_S = 480.0


class Skip(Exception):
    """The item cannot run here; the message says why."""


@dataclass
class Ctx:
    device: torch.device
    dry: bool
    tmp: Path
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    notebooks: bool = True

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def timeout(self) -> float:
        """Seconds a subprocess may take: what is left of the budget, but never less than a floor
        (a loaded CPU in a dry run is slow; the result, not the speed, is what the dry run checks)."""
        return max(120.0 if self.cuda else 900.0, self.left())

    def need_cuda(self, what: str) -> None:
        if not self.cuda:
            raise Skip(f"CUDA only ({what}); no CUDA device in this run")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


ITEMS: list[tuple] = []


def item(name: str):
    def deco(fn: Callable[[Ctx], str]):
        ITEMS.append((name, fn))
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def corpus(ctx: Ctx) -> str:
    path = ctx.tmp / "corpus.txt"
    if not path.exists():
        text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "course_lib").glob("*.py")))
        path.write_text(text[:80_000], encoding="utf-8")
    return str(path)


TINY = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
SMALL = dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=352, max_seq_len=256)


def model_cfg(ctx: Ctx):
    from course_lib.config import ModelConfig

    return ModelConfig(**(TINY if ctx.dry else SMALL))


def train_cfg(ctx: Ctx, name: str, **kw):
    from course_lib.config import TrainConfig

    base = dict(
        data=corpus(ctx),
        max_steps=6 if ctx.dry else 12,
        batch_size=4 if ctx.dry else 16,
        seq_len=32 if ctx.dry else 128,
        warmup_steps=2,
        eval_interval=1000,
        eval_batches=1,
        log_interval=1000,
        ckpt_interval=0,
        out_dir=str(ctx.tmp / name),
        tensorboard=False,
        lr=3e-3,
        min_lr=3e-4,
        device=str(ctx.device),
        val_fraction=0.1,
        resume=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def train(ctx: Ctx, name: str, callbacks=(), **kw):
    from course_lib.train import Trainer

    tr = Trainer(model_cfg(ctx), train_cfg(ctx, name, **kw), callbacks=callbacks, console=False, save_checkpoints=False)
    hist = tr.fit()
    return tr, hist


def timed(ctx: Ctx, fn: Callable[[], object], repeats: int = 3) -> float:
    """Median seconds of ``fn`` after one warm-up call, device synchronised around each call."""
    fn()
    out = []
    for _ in range(repeats):
        ctx.sync()
        t = time.perf_counter()
        fn()
        ctx.sync()
        out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2]


def reference(ctx: Ctx):
    from course_lib.pretrained import load_reference_model

    model, tok = load_reference_model()
    return model.to(ctx.device).eval(), tok


def env(extra: dict | None = None) -> dict:
    from course_lib.distributed import subprocess_env

    e = subprocess_env(extra or {})
    e.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the bitwise resume
    return e


# --------------------------------------------------------------------------------------------
# items: training
# --------------------------------------------------------------------------------------------
@item("environment")
def check_env(ctx: Ctx) -> str:
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        return (
            f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} GPU(s)"
        )
    return f"CPU dry run, torch {torch.__version__}, {os.cpu_count()} cores"


@item("train fp32")
def check_fp32(ctx: Ctx) -> str:
    tr, h = train(ctx, "fp32")
    assert all(next(tr.model.parameters()).device.type == ctx.device.type for _ in [0])
    first, last = h[0]["loss"], h[-1]["loss"]
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    return f"{len(h)} steps, loss {first:.3f} -> {last:.3f}"


@item("train bf16 autocast")
def check_bf16(ctx: Ctx) -> str:
    if ctx.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    tr, h = train(ctx, "bf16", dtype="bf16")
    dtypes = {p.dtype for p in tr.model.parameters()}
    assert dtypes == {torch.float32}, f"master weights must stay fp32 under autocast, got {dtypes}"
    first, last = h[0]["loss"], h[-1]["loss"]
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    return f"loss {first:.3f} -> {last:.3f}, weights fp32"


@item("train fp16 + GradScaler, forced overflow")
def check_fp16(ctx: Ctx) -> str:
    from course_lib.callbacks import Callback

    bad_step = 3
    seen = {}

    class Overflow(Callback):
        def on_after_backward(self, trainer):
            if trainer.step + 1 == bad_step:  # the step being computed now
                p = next(p for p in trainer.model.parameters() if p.grad is not None)
                p.grad.view(-1)[0] = float("inf")
                seen["scale_before"] = trainer.scaler.get_scale()
                seen["weights"] = [q.detach().clone() for q in trainer.model.parameters()]

        def on_step_end(self, trainer, metrics):
            if metrics["step"] == bad_step:
                seen["skipped"] = metrics["skipped"]
                seen["scale_after"] = trainer.scaler.get_scale()
                seen["unchanged"] = all(
                    torch.equal(a, b) for a, b in zip(seen["weights"], trainer.model.parameters(), strict=True)
                )

    with contextlib.redirect_stdout(open(os.devnull, "w")):  # the "fp16 on CPU" note of the dry run
        tr, h = train(ctx, "fp16", callbacks=[Overflow()], dtype="fp16", stop_on_nonfinite=False)
    assert seen.get("skipped") is True, f"step {bad_step} with an inf gradient was not skipped"
    assert seen["unchanged"], "weights changed on the skipped step"
    assert seen["scale_after"] == seen["scale_before"] / 2, (
        f"scale {seen['scale_before']} -> {seen['scale_after']}, expected it halved"
    )
    assert tr.skipped_steps == 1, f"{tr.skipped_steps} skipped steps, expected 1"
    return (
        f"step {bad_step} skipped, weights untouched, scale {seen['scale_before']:.0f} -> "
        f"{seen['scale_after']:.0f}, loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}"
    )


@item("activation checkpointing")
def check_ac(ctx: Ctx) -> str:
    from course_lib.model import DIYModel

    cfg = model_cfg(ctx)
    B, T = (4, 32) if ctx.dry else (16, 256)
    x = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    grads, peaks = [], []
    for ac in (False, True):
        torch.manual_seed(0)
        m = DIYModel(cfg).to(ctx.device).set_activation_checkpointing(ac).train()
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
            base = torch.cuda.memory_allocated(ctx.device)
        m(x, targets=x).loss.backward()
        if ctx.cuda:
            ctx.sync()
            peaks.append(torch.cuda.max_memory_allocated(ctx.device) - base)
        grads.append([p.grad.detach().clone() for p in m.parameters()])
        del m
    diff = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    assert diff <= 1e-5, f"gradients differ by {diff:.2e} with activation checkpointing"
    if not ctx.cuda:
        return f"gradients equal (max diff {diff:.1e}); memory saving measured on CUDA only"
    assert peaks[1] < peaks[0], f"peak {peaks[1] / 2**20:.1f} MiB with AC, {peaks[0] / 2**20:.1f} MiB without"
    return f"gradients equal (max diff {diff:.1e}); peak {peaks[0] / 2**20:.1f} -> {peaks[1] / 2**20:.1f} MiB"


@item("exact resume after SIGKILL")
def check_kill_resume(ctx: Ctx) -> str:
    from course_lib.checkpoint import CheckpointManager
    from course_lib.faults import fault_env

    m = TINY if ctx.dry else SMALL
    args = [
        sys.executable,
        "-m",
        "course_lib.train",
        "--data",
        corpus(ctx),
        "--device",
        str(ctx.device),
        "--max-steps",
        "6" if ctx.dry else "10",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--warmup-steps",
        "2",
        "--eval-interval",
        "5",
        "--eval-batches",
        "1",
        "--log-interval",
        "5",
        "--ckpt-interval",
        "2",
        "--no-tensorboard",
        "--val-fraction",
        "0.1",
    ]
    for k, v in m.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    ref, run = ctx.tmp / "kill_ref", ctx.tmp / "kill_run"

    def go(out: Path, extra: dict | None = None) -> int:
        p = subprocess.run(
            args + ["--out-dir", str(out)],
            env=env(extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=ctx.timeout(),
        )
        if p.returncode not in (0, -9, 137):
            raise AssertionError(f"train exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        return p.returncode

    go(ref)
    kill_at = 3 if ctx.dry else 5
    killed = go(run, fault_env("after_step", kill_at))
    assert killed in (-9, 137), f"the faulted run was not killed (exit {killed})"
    go(run)
    a = CheckpointManager(ref, verbose=False).load_latest(map_location="cpu")[0]
    b = CheckpointManager(run, verbose=False).load_latest(map_location="cpu")[0]
    last = 6 if ctx.dry else 10
    assert a["step"] == b["step"] == last, (a["step"], b["step"])
    n, bad = 0, []
    for part in ("model", "optimizer"):
        for name, (x, y) in _paired_tensors(a[part], b[part]):
            n += 1
            if not torch.equal(x, y):
                bad.append(f"{part}{name}")
    assert not bad, f"{len(bad)} of {n} tensors differ after the resume, e.g. {bad[:3]}"
    return (
        f"SIGKILL after step {kill_at}, resumed from step {kill_at - 1}: {n} tensors of model and optimizer "
        f"bitwise equal to an uninterrupted run at step {last}"
    )


def _paired_tensors(a, b, prefix=""):
    if isinstance(a, torch.Tensor):
        yield prefix, (a, b)
    elif isinstance(a, dict):
        for k in a:
            yield from _paired_tensors(a[k], b[k], f"{prefix}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _paired_tensors(x, y, f"{prefix}/{i}")


# --------------------------------------------------------------------------------------------
# items: memory
# --------------------------------------------------------------------------------------------
@item("memory estimate vs measured, 3 sizes")
def check_memory(ctx: Ctx) -> str:
    from course_lib.config import ModelConfig
    from course_lib.memory import compare

    if ctx.dry:
        r = compare(ModelConfig(**TINY), 2, 32, "fp32", device="cpu")
        raise Skip(
            f"CUDA only (+-10% against torch.cuda.max_memory_allocated); the CPU path ran: estimate "
            f"{r['estimate_MiB']:.2f} MiB vs profiler {r['measured_MiB']:.2f} MiB"
        )
    sizes = [
        (ModelConfig(**SMALL), 8, 256),
        (ModelConfig(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden=1376, max_seq_len=512), 8, 512),
        (ModelConfig(d_model=1024, n_layers=12, n_heads=16, n_kv_heads=8, ffn_hidden=2752, max_seq_len=1024), 4, 1024),
    ]
    rows = [compare(c, b, t, "fp32", device=str(ctx.device)) for c, b, t in sizes]
    desc = ", ".join(
        f"{r['model']} {r['estimate_MiB']:.0f}/{r['measured_MiB']:.0f} MiB ({r['error_pct']:+.1f}%)" for r in rows
    )
    assert all(r["within_10pct"] for r in rows), f"outside +-10%: {desc}"
    return "estimate/measured " + desc


@item("largest-batch search")
def check_max_batch(ctx: Ctx) -> str:
    from course_lib.config import ModelConfig
    from course_lib.memory import estimate, find_max_batch_size, measure_peak

    cfg = ModelConfig(**(TINY if ctx.dry else SMALL))
    seq = 32 if ctx.dry else 256
    budget = (8 if ctx.dry else 1024) * 2**20
    b = find_max_batch_size(budget, cfg, seq)
    assert b >= 1, "not even batch 1 fits the budget"
    assert estimate(cfg, b + 1, seq).peak > budget
    got = measure_peak(cfg, b, seq, device=str(ctx.device))["peak"]
    msg = f"budget {budget / 2**20:.0f} MiB -> batch {b}, measured peak {got / 2**20:.1f} MiB ({got / budget:.0%})"
    if ctx.dry:
        return msg + " (CPU profiler; checked against the budget on CUDA)"
    assert got <= budget * 1.10, msg
    return msg


# --------------------------------------------------------------------------------------------
# items: distributed (workers run as `python bench/gpu_check.py --worker KIND` with torchrun's env)
# --------------------------------------------------------------------------------------------
def worker(kind: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cpu"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if kind == "nccl" else "gloo")
    t = torch.full((4,), float(rank + 1), device=dev)
    dist.all_reduce(t)
    assert t.device.type == dev.type and t.tolist() == [world * (world + 1) / 2] * 4, t
    from course_lib.config import ModelConfig
    from course_lib.model import DIYModel

    torch.manual_seed(0)
    model = DDP(DIYModel(ModelConfig(**TINY)).to(dev), device_ids=[dev.index] if kind == "nccl" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(rank)).to(dev)
    for _ in range(2):
        model(x, targets=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    got = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(got, flat)
    assert all(torch.equal(got[0], g) for g in got), "ranks hold different weights after DDP steps"
    dist.barrier()
    dist.destroy_process_group()
    print(f"worker {kind} rank {rank}/{world} ok on {flat.device}", flush=True)


def spawn_workers(ctx: Ctx, kind: str, world: int, dev: str) -> None:
    from course_lib.distributed import rendezvous_store

    with rendezvous_store() as rdzv:  # bound before the ranks start: no port race
        procs = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", kind],
                cwd=ROOT,
                env=env(
                    {
                        "RANK": str(r),
                        "LOCAL_RANK": str(r),
                        "WORLD_SIZE": str(world),
                        **rdzv,
                        "GPU_CHECK_DEVICE": dev,
                    }
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(world)
        ]
        outs = []
        try:
            for p in procs:
                out, _ = p.communicate(timeout=ctx.timeout())
                outs.append((p.returncode, out))
        finally:
            for p in procs:  # a rank that timed out must not outlive the check (nor keep the port)
                if p.poll() is None:
                    p.kill()
                    p.wait()
    bad = [(rc, out.strip().splitlines()[-3:]) for rc, out in outs if rc != 0]
    assert not bad, f"{kind} workers failed: {bad}"


@item("2 gloo ranks, tensors on the device")
def check_gloo(ctx: Ctx) -> str:
    spawn_workers(ctx, "gloo", 2, str(ctx.device) if not ctx.cuda else "cuda:0")
    return f"all_reduce + 2 DDP steps on {'CUDA' if ctx.cuda else 'CPU'} tensors, weights equal on both ranks"


@item("nccl: one rank (1 GPU) or DDP + FSDP2 (>= 2 GPUs)")
def check_nccl(ctx: Ctx) -> str:
    ctx.need_cuda("nccl")
    n = torch.cuda.device_count()
    if n < 2:
        spawn_workers(ctx, "nccl", 1, "cuda:0")
        return "1 GPU: one nccl rank (all_reduce + DDP steps); DDP/FSDP2 across GPUs not checked (needs >= 2)"
    from course_lib.distributed import torchrun_command

    done = []
    for strategy in ("ddp", "fsdp"):
        out = ctx.tmp / f"nccl_{strategy}"
        cmd = torchrun_command(
            [
                "--data",
                corpus(ctx),
                "--max-steps",
                "6",
                "--batch-size",
                "4",
                "--seq-len",
                "64",
                "--warmup-steps",
                "1",
                "--ckpt-interval",
                "3",
                "--no-tensorboard",
                "--dtype",
                "bf16",
                "--strategy",
                strategy,
                "--out-dir",
                str(out),
            ],
            nproc_per_node=2,
        )
        p = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=ctx.timeout())
        assert p.returncode == 0, f"{strategy} over nccl exited {p.returncode}: {p.stderr.strip().splitlines()[-3:]}"
        done.append(strategy)
    return f"{n} GPUs: torchrun 2 ranks, {' and '.join(done)} over nccl, 6 steps with checkpoints"


# --------------------------------------------------------------------------------------------
# items: decode
# --------------------------------------------------------------------------------------------
def _greedy(model, ids, n, **kw):
    from course_lib.generate import generate

    return generate(model, ids, n, **kw)


@item("decode: cache vs no cache")
def check_cache(ctx: Ctx) -> str:
    model, tok = reference(ctx)
    ids = torch.tensor([tok.encode("def parse_args(argv):\n    ")], device=ctx.device)
    n = 16 if ctx.dry else 64
    a, b = _greedy(model, ids, n), _greedy(model, ids, n, use_cache=False)
    assert torch.equal(a, b), "cached and uncached greedy decoding differ"
    t_c = timed(ctx, lambda: _greedy(model, ids, n), 1 if ctx.dry else 3)
    t_n = timed(ctx, lambda: _greedy(model, ids, n, use_cache=False), 1 if ctx.dry else 3)
    return f"same {n} tokens; {n / t_c:,.0f} vs {n / t_n:,.0f} tok/s ({t_n / t_c:.1f}x with the cache)"


@item("decode: batch scaling")
def check_batch(ctx: Ctx) -> str:
    model, tok = reference(ctx)
    n = 8 if ctx.dry else 32
    sizes = [1, 4] if ctx.dry else [1, 8, 32, 128]
    rates = {}
    for b in sizes:
        ids = torch.randint(0, 256, (b, 32), generator=torch.Generator().manual_seed(b)).to(ctx.device)
        rates[b] = b * n / timed(ctx, lambda ids=ids: _greedy(model, ids, n), 1 if ctx.dry else 3)
    desc = ", ".join(f"batch {b}: {r:,.0f} tok/s" for b, r in rates.items())
    if ctx.cuda:
        assert rates[sizes[-1]] > 4 * rates[1], f"batching should multiply throughput on a GPU: {desc}"
    return desc


@item("decode: compiled static cache, with and without CUDA graphs")
def check_compiled(ctx: Ctx) -> str:
    ctx.need_cuda("torch.compile on CPU costs minutes here; mode='reduce-overhead' = CUDA graphs")
    from course_lib.generate import compiled_decode_step, make_compiled_cache, prefill

    model, tok = reference(ctx)
    ids = torch.tensor([tok.encode("import os\n")], device=ctx.device)
    n = 64

    def run(mode):
        cache = make_compiled_cache(model, 1, ids.shape[1] + n)
        step = compiled_decode_step(mode)
        logits = prefill(model, ids, None, cache)
        cache.advance(ids.shape[1])
        out = []
        with torch.no_grad():
            for _ in range(n):
                nxt = logits.argmax(-1)
                out.append(nxt)
                logits = step(model, nxt.clone(memory_format=torch.contiguous_format), cache).clone()
                cache.advance(1)
        return torch.stack(out, 1)

    eager = _greedy(model, ids, n)
    res = {}
    for mode in (None, "reduce-overhead"):
        got = run(mode)  # compiles
        assert torch.equal(got, eager), f"compiled decode (mode={mode}) gives other tokens than eager"
        res[mode] = n / timed(ctx, lambda mode=mode: run(mode))
    t_e = n / timed(ctx, lambda: _greedy(model, ids, n))
    return (
        f"same tokens; eager {t_e:,.0f}, compiled {res[None]:,.0f}, compiled + CUDA graphs "
        f"{res['reduce-overhead']:,.0f} tok/s"
    )


@item("int8 weight-only kernel")
def check_int8(ctx: Ctx) -> str:
    from course_lib.quantize import convert_for_runtime, int8_kernel_available, quantize_model

    if not int8_kernel_available():
        raise Skip("torch._weight_int8pack_mm is missing from this torch")
    model, tok = reference(ctx)
    q = convert_for_runtime(quantize_model(model.cpu(), "int8", kernel=False).to(ctx.device), kernel=True)
    model.to(ctx.device)
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    with torch.no_grad():
        ref, got = model(ids).logits.float(), q(ids).logits.float()
    err = ((got - ref).norm() / ref.norm()).item()
    assert err < 0.05, f"int8 logits off by {err:.3f} (relative)"
    layer = next(m for m in q.modules() if hasattr(m, "kernel") and type(m).__name__ == "Int8Linear")
    assert layer.kernel, "the int8 kernel is not in use"
    return f"kernel on {ctx.device.type}, relative logit error {err:.4f}"


@item("GPTQ int4 on the device")
def check_gptq(ctx: Ctx) -> str:
    ctx.need_cuda(
        "GPTQ's column loop is seconds on a GPU, minutes on a loaded CPU; the CPU path is tests/unit/test_quantize.py"
    )
    from course_lib.pretrained import calibration_batch
    from course_lib.quantize import quantize_model

    model, tok = reference(ctx)
    calib = calibration_batch(4 if ctx.dry else 32, 64 if ctx.dry else 128).to(ctx.device)
    q = quantize_model(model, "gptq-int4", calibration=calib)
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    with torch.no_grad():
        ref, got = model(ids).logits.float(), q(ids).logits.float()
    err = ((got - ref).norm() / ref.norm()).item()
    assert err < 0.2, f"GPTQ int4 logits off by {err:.3f} (relative)"
    return f"quantized on {ctx.device.type}, relative logit error {err:.4f} (reference int4 forward)"


@item("int4 CUDA kernel (tinygemm)")
def check_int4(ctx: Ctx) -> str:
    ctx.need_cuda("torch.ops.aten._weight_int4pack_mm is the CUDA tinygemm kernel; the CPU one is tested in tests/")
    if torch.cuda.get_device_capability(ctx.device) < (8, 0):
        raise Skip("tinygemm needs sm_80 or newer")
    from course_lib.quantize import dequantize_int4, quantize_int4, unpack_int4

    N, K, group = 512, 1024, 128
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0))
    packed, scales = quantize_int4(w, group)
    ref_w = dequantize_int4(packed, scales, group, K)
    q_u4 = (unpack_int4(packed).to(torch.int32) + 8).to(torch.uint8)  # (N, K) in 0..15
    w_u8 = (q_u4[:, ::2] << 4 | q_u4[:, 1::2]).contiguous().to(ctx.device)  # (N, K/2), CUDA layout
    tiled = torch.ops.aten._convert_weight_to_int4pack(w_u8, 8)
    sz = torch.stack([scales.t(), torch.zeros_like(scales.t())], -1).contiguous().to(ctx.device, torch.bfloat16)
    x = torch.randn(8, K, generator=torch.Generator().manual_seed(1)).to(ctx.device, torch.bfloat16)
    got = torch.ops.aten._weight_int4pack_mm(x, tiled, group, sz).float()
    ref = x.float() @ ref_w.to(ctx.device).t()
    err = ((got - ref).norm() / ref.norm()).item()
    assert err < 0.02, f"int4 CUDA kernel off by {err:.3f} (relative) from the dequantized reference"
    return f"tinygemm matches the dequantized weight (relative error {err:.4f})"


@item("bitsandbytes int8 and NF4")
def check_bnb(ctx: Ctx) -> str:
    ctx.need_cuda("bitsandbytes kernels")
    try:
        import bitsandbytes as bnb
    except Exception as e:  # noqa: BLE001 - not installed, or installed without its CUDA library
        raise Skip(f"bitsandbytes not importable ({type(e).__name__}: {str(e)[:80]})") from None
    lin = torch.nn.Linear(1024, 1024, bias=False).half()
    x = torch.randn(8, 1024, device=ctx.device, dtype=torch.float16)
    ref = (x @ lin.weight.to(ctx.device).t()).float()
    out = []
    l8 = bnb.nn.Linear8bitLt(1024, 1024, bias=False, has_fp16_weights=False)
    l8.load_state_dict(lin.state_dict())
    l4 = bnb.nn.Linear4bit(1024, 1024, bias=False, quant_type="nf4", compute_dtype=torch.float16)
    l4.load_state_dict(lin.state_dict())
    for name, layer in (("int8", l8), ("nf4", l4)):
        layer = layer.to(ctx.device)
        with torch.no_grad():
            err = ((layer(x).float() - ref).norm() / ref.norm()).item()
        assert err < 0.15, f"bitsandbytes {name} off by {err:.3f}"
        out.append(f"{name} relative error {err:.3f}")
    return f"bitsandbytes {bnb.__version__}: " + ", ".join(out)


@item("MBU against a bandwidth probe")
def check_mbu(ctx: Ctx) -> str:
    from course_lib.config import ModelConfig
    from course_lib.model import DIYModel

    n_bytes = (16 if ctx.dry else 1024) * 2**20
    src = torch.empty(n_bytes // 4, device=ctx.device)
    dst = torch.empty_like(src)
    bw = 2 * n_bytes / timed(ctx, lambda: dst.copy_(src), 5)  # read + write
    src = dst = None  # free the probe's buffers
    cfg = (
        ModelConfig(**SMALL)
        if ctx.dry
        else ModelConfig(d_model=1024, n_layers=8, n_heads=16, n_kv_heads=8, ffn_hidden=2752, max_seq_len=512)
    )
    torch.manual_seed(0)
    model = DIYModel(cfg).to(ctx.device).eval()
    w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 256, (1, 16), device=ctx.device)
    n = 8 if ctx.dry else 64
    tok_s = n / timed(ctx, lambda: _greedy(model, ids, n), 1 if ctx.dry else 3)
    mbu = tok_s * w_bytes / bw
    assert 0 < mbu < 1.2, f"MBU {mbu:.2f} is not a fraction of the probe's bandwidth"
    return (
        f"copy probe {bw / 1e9:,.0f} GB/s; eager decode {tok_s:,.0f} tok/s x {w_bytes / 1e6:.0f} MB of weights "
        f"= MBU {mbu:.1%} (batch 1)"
    )


# --------------------------------------------------------------------------------------------
# items: engine, server, notebooks
# --------------------------------------------------------------------------------------------
@item("engine + OpenAI-compatible server on the device")
def check_engine(ctx: Ctx) -> str:
    import openai

    from course_lib.engine import Engine
    from course_lib.serve import ServerThread, create_app

    model, tok = reference(ctx)
    prompts = ["def main(", "import sys\n", "class Config:\n    "]
    n = 12
    engine = Engine(model, eos_id=None, max_batch=4)
    reqs = [engine.submit(tok.encode(p), n, temperature=0.0) for p in prompts]
    engine.run_until_done()
    for p, r in zip(prompts, reqs, strict=True):
        want = _greedy(model, torch.tensor([tok.encode(p)], device=ctx.device), n)[0].tolist()
        assert r.output == want, f"engine output for {p!r} differs from generate()"
    # sampling on the device with the request's CPU generator (seeded): reproducible, same as generate()
    sampled = []
    for _ in range(2):
        eng = Engine(model, eos_id=None, max_batch=2)
        r = eng.submit(tok.encode(prompts[0]), n, temperature=0.8, seed=7)
        eng.run_until_done()
        assert r.error is None, r.error
        sampled.append(r.output)
    assert sampled[0] == sampled[1], "seeded sampling in the engine is not reproducible"
    with ServerThread(create_app(Engine(model, eos_id=tok.eos_id, max_batch=4), tok, "gpu-check")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        c = client.completions.create(model="gpu-check", prompt=prompts[0], max_tokens=n, temperature=0)
    assert c.choices[0].text, "empty completion"
    return (
        f"{len(prompts)} greedy requests = generate() token for token; seeded sampling reproducible; "
        f"/v1/completions answered {c.usage.completion_tokens} tokens"
    )


@item("notebooks in quick mode (nbval)")
def check_notebooks(ctx: Ctx) -> str:
    ctx.need_cuda("the CPU run of every notebook is `make test`'s nbval")
    if not ctx.notebooks:
        raise Skip("--no-notebooks")
    limit = ctx.left() - 10
    if limit < 60:
        raise Skip(f"only {ctx.left():.0f} s of the budget left")
    nbs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        "--timeout",
        "600",
        *nbs,
    ]
    try:
        p = subprocess.run(cmd, env=env({"COURSE_QUICK": "1"}), cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"nbval did not finish within the {limit:.0f} s left of the budget") from None
    tail = p.stdout.strip().splitlines()[-1:] if p.stdout.strip() else ["(no output)"]
    assert p.returncode == 0, f"nbval failed: {tail[0]}"
    return f"{len(nbs)} notebooks: {tail[0]}"


# --------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------
def gpu_section(results: list[dict], ctx: Ctx) -> str:
    p = torch.cuda.get_device_properties(ctx.device)
    lines = [
        BEGIN,
        "## GPU check",
        "",
        f"Written by `make gpu-check` (bench/gpu_check.py) on {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"{p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {torch.cuda.device_count()} GPU(s)), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}.",
        "",
        "| item | result | detail | s |",
        "|---|---|---|---|",
    ]
    for r in results:
        detail = r["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['name']} | {r['status']} | {detail} | {r['seconds']:.1f} |")
    return "\n".join(lines + ["", END])


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def run_items(ctx: Ctx, only: list[str] | None = None) -> list[dict]:
    results = []
    for name, fn in ITEMS:
        if only and not any(o in name for o in only):
            continue
        t = time.perf_counter()
        try:
            status, detail = "PASS", fn(ctx)
        except Skip as e:
            status, detail = "SKIP", str(e)
        except Exception as e:  # noqa: BLE001 - one failing item must not hide the others
            status = "FAIL"
            detail = f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]
            if os.environ.get("GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
        secs = time.perf_counter() - t
        results.append({"name": name, "status": status, "detail": detail, "seconds": secs})
        print(f"[{status}] {name}: {detail} ({secs:.1f} s)", flush=True)
        if ctx.cuda:
            torch.cuda.empty_cache()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; CUDA-only items reported as skipped")
    ap.add_argument("--require-cuda", action="store_true", help="exit 2 when there is no CUDA device (make gpu-check)")
    ap.add_argument("--only", nargs="*", help="run only the items whose name contains one of these words")
    ap.add_argument("--no-notebooks", action="store_true", help="skip the nbval run of the notebooks")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"time budget in seconds (default {BUDGET_S:.0f} on CUDA, unbounded-ish 3000 in a dry run)",
    )
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="file whose GPU section is written (CUDA runs)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "[gpu-check] no CUDA device here: nothing to check on a GPU "
            "(`python bench/gpu_check.py --dry-run` runs the CPU half)",
            flush=True,
        )
        return 2 if args.require_cuda else 0
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        budget = args.budget_s if args.budget_s is not None else (3000.0 if args.dry_run else BUDGET_S)
        ctx = Ctx(device=device, dry=args.dry_run, tmp=Path(tmp), budget_s=budget, notebooks=not args.no_notebooks)
        print(
            f"[gpu-check] {'dry run on CPU' if ctx.dry else 'CUDA'}: {len(ITEMS)} items, budget {ctx.budget_s:.0f} s",
            flush=True,
        )
        results = run_items(ctx, args.only)
    counts = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    total = time.perf_counter() - ctx.t0
    print(
        f"[gpu-check] {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {total:.0f} s",
        flush=True,
    )
    for r in results:
        if r["status"] == "SKIP":
            print(f"[gpu-check] skipped: {r['name']} ({r['detail']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "results": results}, indent=2), encoding="utf-8")
    if ctx.cuda and not args.only:
        write_section(Path(args.out), gpu_section(results, ctx))
        print(f"[gpu-check] wrote the GPU section of {args.out}", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
