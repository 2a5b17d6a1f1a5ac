"""Lesson measurements: timing tables and size/quality comparisons.

The core modules (``generate``, ``quantize``, ``kv_cache``) hold the library; the harnesses that
*measure* it for a lesson or a benchmark live here, so a core module never imports the modules
it is measured with (the quantizer no longer imports the generation loop to time itself).

* ``measure_generation`` / ``decode_speed_vs_context`` / ``throughput_vs_batch``: prefill and
  decode tokens/s (lessons 4.2.3, 4.2.4; bench/kv_cache.py, bench/batched_generation.py);
* ``comparison_table``: size, speed and quality per quantization method (lesson 4.2.2);
* ``paged_vs_static_memory``: bytes reserved by paged vs preallocated KV caches (lesson 4.2.3);
* ``rank_state_run`` / ``rank_state_table``: per-rank bytes and collectives of a real 1- or 2-rank
  gloo run under DDP and FSDP, next to ``memory.per_rank_state_bytes`` (lesson 4.1.6, ex416).

Timings keep the best of ``repeats`` runs (least disturbed by other processes) and every
ratio compares numbers measured in the same call. ``interleaved_rounds`` runs candidates in turn,
round after round, and reports the median and range: on a loaded machine the range widens
instead of one candidate silently getting the quiet moment.

Every speed harness takes a model or a ``ModelConfig`` (a random-init model is built from it:
speed does not depend on what the weights learned). ``speed_config()`` is the >= 20 M-parameter
configuration of the speed tables: the 1.6 M reference model's weights (6.5 MB) mostly fit in the
CPU's caches, so much of its decode step is per-op overhead (Python, dispatch, small kernels); at
22 M parameters (89 MB in fp32) every decode step streams all weights from memory, and the step
is bound by memory bandwidth, which is what the KV cache, quantization and batching act on.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile

from ..config import ModelConfig, pick
from ..distributed import rendezvous_store, subprocess_env
from ..export import artifact_size, save_inference
from ..fsdp import apply_fsdp, rank_state_bytes
from ..fsio import atomic_write_text
from ..generate import (
    compile_available,
    compiled_decode_step,
    decode_step,
    make_cache,
    make_compiled_cache,
    prefill,
    warm_up_compiled,
)
from ..kv_cache import BlockPool, PagedKVCache, kv_cache_bytes_formula
from ..memory import _native_stderr_silenced, collective_bytes_per_step, per_rank_state_bytes
from ..model import DIYModel
from ..quantize import compare_to_reference, dynamic_int8, model_nbytes, perplexity, quantize_model, save_quantized
from ..util import cdiv, first_line


# --------------------------------------------------------------------------------------------
# Models for speed tables, and interleaved timing
# --------------------------------------------------------------------------------------------
def speed_config(quick: bool | None = None, max_seq_len: int = 1088) -> ModelConfig:
    """The speed tables' model: d512 x 8 layers, 8 query / 2 kv heads, SwiGLU 1376 (22.3 M
    parameters with the byte vocabulary). Quick mode (``COURSE_QUICK``) uses d256 x 4 (2.8 M)."""
    small = pick(False, True) if quick is None else quick
    if small:
        return ModelConfig(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, ffn_hidden=688, max_seq_len=max_seq_len)
    return ModelConfig(d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_hidden=1376, max_seq_len=max_seq_len)


def as_model(model_or_config, seed: int = 0):
    """A model as given, or a random-init ``DIYModel`` (eval mode) built from a ``ModelConfig``."""
    if isinstance(model_or_config, ModelConfig):
        torch.manual_seed(seed)
        return DIYModel(model_or_config).eval()
    return model_or_config


def pin_threads(default: int = 1) -> int:
    """Benchmarks: set torch's thread count from ``BENCH_THREADS`` (default ``default``), print it
    and return it. A figure means little without the thread count it was measured at."""
    n = int(os.environ.get("BENCH_THREADS", str(default)))
    torch.set_num_threads(n)
    print(f"torch threads pinned to {torch.get_num_threads()} (BENCH_THREADS)", flush=True)
    return torch.get_num_threads()


def ratio_stats(values: Sequence[float]) -> dict:
    """Median and range of per-round figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def interleaved_rounds(candidates: Mapping[str, Callable[[], float]], rounds: int = 3) -> dict[str, dict]:
    """Call each candidate (returning a figure, e.g. tokens/s) once per round, in turn, for
    ``rounds`` rounds. Returns ``{name: {"median", "min", "max", "values"}}``."""
    values: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            values[name].append(float(fn()))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v} for k, v in values.items()}


# --------------------------------------------------------------------------------------------
# Generation speed
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_generation(
    model,
    batch_size: int,
    prompt_len: int,
    new_tokens: int,
    *,
    cache: str | None = "dynamic",
    repeats: int = 1,
    seed: int = 0,
) -> dict:
    """Time prefill and decode separately (greedy, random prompt tokens, no EOS).

    ``cache=None`` is the no-cache baseline: every decode step re-runs the whole sequence.
    Returns tokens/s for both phases; decode tokens/s counts ``batch_size`` tokens per step.
    The best of ``repeats`` runs is kept (least disturbed by other processes).
    ``model`` may be a ``ModelConfig`` (random init).
    """
    model = as_model(model)
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch_size, prompt_len), generator=g).to(device)
    best_p, best_d = float("inf"), float("inf")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(repeats):
        past = make_cache(cache, model, batch_size, max_len=prompt_len + new_tokens) if cache else None
        sync()
        t0 = time.perf_counter()
        if past is not None:
            logits = prefill(model, ids, None, past)
        else:
            logits = model(ids).logits[:, -1, :]
        sync()
        t1 = time.perf_counter()
        seq = ids
        for _ in range(new_tokens):
            nxt = logits.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
            logits = decode_step(model, nxt, None, past) if past is not None else model(seq).logits[:, -1, :]
        sync()
        t2 = time.perf_counter()
        best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
    return {
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "cache": cache or "none",
        "prefill_s": best_p,
        "decode_s": best_d,
        "prefill_tok_s": batch_size * prompt_len / best_p,
        "decode_tok_s": batch_size * new_tokens / best_d,
    }


@torch.no_grad()
def measure_compiled_decode(model, batch_size: int, prompt_len: int, new_tokens: int, seed: int = 0) -> float:
    """Decode tokens/s of the compiled fast path (``TensorPositionCache`` + compiled step, greedy).
    Call ``warm_up_compiled`` first, or this call pays the compile time."""
    model = as_model(model)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch_size, prompt_len), generator=g).to(device)
    cache = make_compiled_cache(model, batch_size, prompt_len + new_tokens)
    step = compiled_decode_step()
    logits = prefill(model, ids, None, cache)
    cache.advance(prompt_len)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        logits = step(model, logits.argmax(-1), cache)
        cache.advance(1)
    sync()
    return batch_size * new_tokens / (time.perf_counter() - t0)


def compiled_vs_eager(model, batch_size: int = 1, prompt_len: int = 32, new_tokens: int = 32, rounds: int = 3) -> dict:
    """Compile time of the decode step, then eager vs compiled decode tokens/s in interleaved
    rounds (median and range). Returns ``{"available": False, "reason": ...}`` without a compiler."""
    ok, why = compile_available()
    if not ok:
        return {"available": False, "reason": why}
    model = as_model(model)
    try:
        warm = warm_up_compiled(model, batch_size, prompt_len + new_tokens)
    except Exception as e:  # noqa: BLE001 - a toolchain that fails mid-compile: the lesson says so and goes on
        return {"available": False, "reason": f"torch.compile failed: {first_line(e)}"}
    res = interleaved_rounds(
        {
            "eager": lambda: measure_generation(model, batch_size, prompt_len, new_tokens)["decode_tok_s"],
            "compiled": lambda: measure_compiled_decode(model, batch_size, prompt_len, new_tokens),
        },
        rounds,
    )
    return {
        "available": True,
        "compile_s": warm,
        "batch_size": batch_size,
        "eager_tok_s": res["eager"]["median"],
        "eager_range": (res["eager"]["min"], res["eager"]["max"]),
        "compiled_tok_s": res["compiled"]["median"],
        "compiled_range": (res["compiled"]["min"], res["compiled"]["max"]),
        "speedup": res["compiled"]["median"] / res["eager"]["median"],
    }


def long_context_copy(model, max_seq_len: int):
    """The same weights in a model whose RoPE tables reach ``max_seq_len`` (for speed sweeps:
    the tables are derived from the config, not stored, so the weights load unchanged)."""
    big = DIYModel(model.config.replace(max_seq_len=max_seq_len))
    big.load_state_dict(model.state_dict())
    return big.to(next(model.parameters()).device).eval()


def decode_speed_vs_context(
    model, contexts: Sequence[int], new_tokens: int = 16, repeats: int = 2, batch_size: int = 1
) -> list[dict]:
    """Decode tokens/s with the KV cache and without it (full recompute), per context length."""
    model = as_model(model)
    rows = []
    for L in contexts:
        c = measure_generation(model, batch_size, L, new_tokens, cache="dynamic", repeats=repeats)
        n = measure_generation(model, batch_size, L, new_tokens, cache=None, repeats=repeats)
        rows.append(
            {
                "context": L,
                "cache_tok_s": c["decode_tok_s"],
                "no_cache_tok_s": n["decode_tok_s"],
                "speedup": c["decode_tok_s"] / n["decode_tok_s"],
            }
        )
    return rows


def throughput_vs_batch(
    model, batch_sizes: Sequence[int], prompt_len: int = 32, new_tokens: int = 32, repeats: int = 2
) -> list[dict]:
    """Decode throughput (generated tokens/s over the whole batch) per batch size, KV cache on."""
    model = as_model(model)
    rows = []
    for b in batch_sizes:
        r = measure_generation(model, b, prompt_len, new_tokens, cache="dynamic", repeats=repeats)
        rows.append(
            {
                "batch_size": b,
                "decode_tok_s": r["decode_tok_s"],
                "prefill_tok_s": r["prefill_tok_s"],
                "ms_per_step": 1000 * r["decode_s"] / new_tokens,
            }
        )
    base = rows[0]["decode_tok_s"]
    for r in rows:
        r["vs_batch1"] = r["decode_tok_s"] / base
    return rows


# --------------------------------------------------------------------------------------------
# Quantization: size, speed and quality per method
# --------------------------------------------------------------------------------------------
def comparison_table(
    model,
    heldout: Tensor,
    calibration: Tensor | None = None,
    group_size: int = 64,
    big_batch: int = 8,
    prompt_len: int = 64,
    new_tokens: int = 16,
    eval_batches: int = 8,
    seq_len: int = 128,
    methods: Sequence[str] = ("fp32", "dynamic-int8", "int8", "int4", "gptq-int4"),
    out_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """One row per method, all measured in this call: file size, model memory, prefill/decode
    tokens/s at batch 1 and ``big_batch``, held-out perplexity, KL and top-1 agreement vs fp32."""
    tmp = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="quant-"))
    rows = []
    for method in methods:
        if method == "fp32":
            qm = model
            save_inference(model, tmp / method)
        elif method == "dynamic-int8":
            qm, _ = dynamic_int8(model)
            torch.save(qm.state_dict(), tmp / "dynamic-int8.pt")  # torch.ao packed params: no safetensors form
        else:
            qm = quantize_model(model, method, group_size, calibration=calibration)
            save_quantized(qm, tmp / method)
        size = artifact_size(tmp / method) if method != "dynamic-int8" else (tmp / "dynamic-int8.pt").stat().st_size
        s1 = measure_generation(qm, 1, prompt_len, new_tokens, repeats=2)
        sb = measure_generation(qm, big_batch, prompt_len, new_tokens, repeats=2)
        ppl = perplexity(qm, heldout, seq_len, 8, eval_batches)
        cmp = compare_to_reference(model, qm, heldout, seq_len, 8, eval_batches)
        rows.append(
            {
                "method": method,
                "file_MB": size / 1e6,
                "memory_MB": model_nbytes(qm) / 1e6,
                "prefill_tok_s_b1": s1["prefill_tok_s"],
                "decode_tok_s_b1": s1["decode_tok_s"],
                f"decode_tok_s_b{big_batch}": sb["decode_tok_s"],
                "perplexity": ppl,
                "kl_vs_fp32": cmp["kl"],
                "top1_vs_fp32": cmp["top1_agreement"],
            }
        )
    base = rows[0]
    for r in rows:
        r["size_ratio"] = r["file_MB"] / base["file_MB"]
        r["ppl_ratio"] = r["perplexity"] / base["perplexity"]
        r["decode_ratio_b1"] = r["decode_tok_s_b1"] / base["decode_tok_s_b1"]
    return rows


def quantized_decode_speed(
    model,
    methods: Sequence[str] = ("fp32", "dynamic-int8", "int8", "int4"),
    batch_sizes: Sequence[int] = (1,),
    group_size: int = 64,
    prompt_len: int = 32,
    new_tokens: int = 16,
    rounds: int = 3,
) -> list[dict]:
    """Decode tokens/s per quantization method and batch size, interleaved rounds (median and
    range), with the ratio of medians to fp32. Speed only: ``model`` may be a ``ModelConfig``
    (random init); quality belongs to ``comparison_table`` on a trained model."""
    model = as_model(model)
    variants = {}
    for m in methods:
        if m == "fp32":
            variants[m] = model
        elif m == "dynamic-int8":
            variants[m] = dynamic_int8(model)[0]
        else:
            variants[m] = quantize_model(model, m, group_size)
    rows = []
    for b in batch_sizes:
        res = interleaved_rounds(
            {
                m: (lambda q=q, b=b: measure_generation(q, b, prompt_len, new_tokens)["decode_tok_s"])
                for m, q in variants.items()
            },
            rounds,
        )
        base = res[methods[0]]["median"]
        for m in methods:
            r = res[m]
            rows.append(
                {
                    "method": m,
                    "batch_size": b,
                    "decode_tok_s": r["median"],
                    "min": r["min"],
                    "max": r["max"],
                    "vs_" + methods[0]: r["median"] / base,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# KV cache memory: paged vs preallocated
# --------------------------------------------------------------------------------------------
def paged_vs_static_memory(model, lengths: Sequence[int], max_len: int, block_size: int = 16) -> dict:
    """Serve sequences of the given lengths from one ``BlockPool``; compare with preallocating
    ``max_len`` positions per sequence (a ``StaticCache`` per sequence, as a server without paging
    must, since it cannot know in advance how long each answer will be).

    Returns bytes reserved by each scheme and bytes actually holding tokens.
    """
    c = model.config
    p = next(model.parameters())
    bpv = p.element_size()
    pool = BlockPool.for_model(model, num_blocks=sum(cdiv(n, block_size) for n in lengths), block_size=block_size)
    caches = []
    with torch.no_grad():
        for n in lengths:
            cache = PagedKVCache(pool, 1)
            model(torch.randint(0, c.vocab_size - 2, (1, n), device=p.device), past_key_values=cache, use_cache=True)
            caches.append(cache)
    used = sum(kv_cache_bytes_formula(c.n_layers, c.n_kv_heads, c.head_dim, n, 1, bpv) for n in lengths)
    paged = sum(cache.nbytes() for cache in caches)
    static = len(lengths) * kv_cache_bytes_formula(c.n_layers, c.n_kv_heads, c.head_dim, max_len, 1, bpv)
    return {
        "sequences": len(lengths),
        "token_bytes": used,
        "paged_bytes": paged,
        "static_bytes": static,
        "paged_waste": (paged - used) / paged,
        "static_waste": (static - used) / static,
        "blocks_used": pool.used_blocks(),
        "block_size": block_size,
    }


# --------------------------------------------------------------------------------------------
# Per-rank state and collectives under DDP and FSDP (lesson 4.1.6)
# --------------------------------------------------------------------------------------------
# c10d operator names (as the profiler records them) -> the collective they perform
_C10D_KIND = {
    "c10d::allreduce_": "all_reduce",
    "c10d::allreduce_coalesced_": "all_reduce",
    "c10d::_allgather_base_": "all_gather",
    "c10d::allgather_": "all_gather",
    "c10d::allgather_into_tensor_coalesced_": "all_gather",
    "c10d::_reduce_scatter_base_": "reduce_scatter",
    "c10d::reduce_scatter_": "reduce_scatter",
    "c10d::reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "c10d::broadcast_": "broadcast",
}


def _numel(shape) -> int:
    return math.prod(shape) if shape else 0


def count_collectives(prof) -> dict:
    """Collectives in a ``torch.profiler`` trace (``record_shapes=True``) of one rank.

    ``calls``: c10d calls per kind (all_reduce, all_gather, reduce_scatter, broadcast).
    ``elements``: the full size that went through them (all-gather: its output; reduce-scatter:
    its input; all-reduce: the buffers the backend reduced, less those of the reduce-scatters,
    which gloo runs as all-reduces of the whole buffer). ``backend``: the backend's own events
    (``gloo:all_reduce``, ...) with their call counts.
    """
    calls = {"all_reduce": 0, "all_gather": 0, "reduce_scatter": 0, "broadcast": 0}
    elements = {"all_reduce": 0, "all_gather": 0, "reduce_scatter": 0}
    backend: dict[str, int] = {}
    backend_all_reduce = 0
    for e in prof.events():
        kind = _C10D_KIND.get(e.name)
        shapes = e.input_shapes or []
        if kind is not None:
            calls[kind] += 1
            if kind == "all_gather" and shapes:
                elements["all_gather"] += _numel(shapes[0])
            elif kind == "reduce_scatter" and len(shapes) > 1:
                elements["reduce_scatter"] += _numel(shapes[1])
        elif e.name.startswith(("gloo:", "nccl:")):
            backend[e.name] = backend.get(e.name, 0) + 1
            if e.name.endswith(":all_reduce") and shapes:
                backend_all_reduce += _numel(shapes[0])
    if calls["all_reduce"]:
        gloo_rs = elements["reduce_scatter"] if any(k.startswith("gloo:") for k in backend) else 0
        elements["all_reduce"] = backend_all_reduce - gloo_rs
    return {"calls": calls, "elements": elements, "backend": backend}


def _train_step(forward, opt: torch.optim.Optimizer, x: Tensor) -> None:
    forward(x, targets=x).loss.backward()
    opt.step()


def rank_state_worker() -> None:
    """One rank of ``rank_state_run`` (started as a process; reads its spec from ``argv[1]``).

    For each strategy: a fresh ``DIYModel`` (same seed on every rank), wrapped in DDP or sharded
    with ``apply_fsdp``, AdamW built after the wrap, one warm-up step, then one profiled step;
    ``rank_state_bytes`` is read after that step's ``optimizer.step()`` (gradients still there).
    """
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = ModelConfig(**spec["model"])
    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own batch, as in training
    x = torch.randint(0, min(256, cfg.vocab_size), (spec["batch_size"], spec["seq_len"]), generator=g)
    report = {"rank": rank}
    for strategy in spec["strategies"]:
        torch.manual_seed(0)
        model = DIYModel(cfg)
        if strategy == "fsdp":
            forward = apply_fsdp(model, reshard_after_forward=spec["reshard_after_forward"])
        else:
            forward = DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _train_step(forward, opt, x)
        opt.zero_grad(set_to_none=True)
        prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        with _native_stderr_silenced():
            prof.start()
        try:
            _train_step(forward, opt, x)
        finally:
            with _native_stderr_silenced():
                prof.stop()
        report[strategy] = {"state": rank_state_bytes(model, opt), "collectives": count_collectives(prof)}
        del forward, model, opt
    atomic_write_text(Path(spec["out_dir"], f"rank{rank}.json"), json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    # torch + gloo can abort in C++ teardown at interpreter exit after a finished run (as
    # course_lib.train's workers, leave without those destructors: the report is written)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank_state_run(
    model_cfg: ModelConfig,
    world_size: int = 2,
    strategies: Sequence[str] = ("ddp", "fsdp"),
    batch_size: int = 2,
    seq_len: int = 16,
    reshard_after_forward: bool = True,
    timeout_s: float = 180.0,
) -> dict:
    """Start ``world_size`` gloo processes (CPU) and measure, per strategy, what each rank holds.

    Returns ``{"world_size": W, "ddp": {"ranks": [rank_state_bytes of rank 0, 1, ...],
    "collectives": count_collectives of rank 0's step}, "fsdp": {...}}``. The processes run
    ``rank_state_worker`` from this module (never notebook code).
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    bad = [s for s in strategies if s not in ("ddp", "fsdp")]
    if bad:
        raise ValueError(f"strategies={list(strategies)}: each must be 'ddp' or 'fsdp'")
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="rank_state_") as tmp:
        spec = {
            "model": model_cfg.to_dict(),
            "strategies": list(strategies),
            "batch_size": batch_size,
            "seq_len": seq_len,
            "reshard_after_forward": reshard_after_forward,
            "out_dir": tmp,
        }
        spec_path = Path(tmp, "spec.json")
        atomic_write_text(spec_path, json.dumps(spec))
        with rendezvous_store() as rdzv:  # bound before the ranks start: parallel runs cannot race
            code = "from course_lib.lab.measure import rank_state_worker; rank_state_worker()"
            procs = []
            for r in range(world_size):
                env = subprocess_env(
                    {
                        "RANK": str(r),
                        "LOCAL_RANK": str(r),
                        "WORLD_SIZE": str(world_size),
                        **rdzv,
                        "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
                    }
                )
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code, str(spec_path)],
                        env=env,
                        cwd=root,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            errors = []
            deadline = time.monotonic() + timeout_s
            for r, p in enumerate(procs):
                try:
                    _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    for q in procs:
                        q.kill()
                    raise RuntimeError(
                        f"rank_state_run: rank {r} still running after {timeout_s:g} s "
                        "(a busy machine? pass a larger timeout_s)"
                    ) from None
                if p.returncode != 0 or not Path(tmp, f"rank{r}.json").exists():
                    errors.append(f"rank {r} exited with {p.returncode}:\n" + "\n".join(err.splitlines()[-15:]))
            if errors:
                raise RuntimeError("rank_state_run failed:\n" + "\n".join(errors))
        reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]
    return {
        "world_size": world_size,
        **{
            s: {"ranks": [rep[s]["state"] for rep in reports], "collectives": reports[0][s]["collectives"]}
            for s in strategies
        },
    }


def rank_state_table(model_cfg: ModelConfig, runs: Sequence[dict], tolerance: float = 0.0) -> list[dict]:
    """Rows of estimate (``memory.per_rank_state_bytes``) next to measured, per run, strategy and rank.

    ``runs``: results of ``rank_state_run``. ``match`` is True when every part (params, grads,
    optimizer, total) is within ``tolerance`` (relative; 0 = the same number of bytes).
    """
    rows = []
    for run in runs:
        w = run["world_size"]
        for strategy in ("ddp", "fsdp"):
            if strategy not in run:
                continue
            for rank, got in enumerate(run[strategy]["ranks"]):
                est = per_rank_state_bytes(model_cfg, w, strategy, rank=rank)
                ok = all(
                    abs(est[k] - got[k]) <= tolerance * max(1, got[k])
                    for k in ("params", "grads", "optimizer", "total")
                )
                rows.append(
                    {
                        "world": w,
                        "strategy": strategy,
                        "rank": rank,
                        **{f"{k}_est": est[k] for k in ("params", "grads", "optimizer", "total")},
                        **{f"{k}_measured": got[k] for k in ("params", "grads", "optimizer", "total")},
                        "gathered_unit_est": est["gathered_unit"],
                        "gathered_root_est": est["gathered_root"],
                        "match": ok,
                    }
                )
    return rows


def collectives_table(model_cfg: ModelConfig, run: dict, reshard_after_forward: bool = True) -> list[dict]:
    """Per strategy and collective: calls and elements from the formula
    (``memory.collective_bytes_per_step``) next to those counted in rank 0's profiled step."""
    rows = []
    w = run["world_size"]
    for strategy in ("ddp", "fsdp"):
        if strategy not in run:
            continue
        est = collective_bytes_per_step(model_cfg, w, strategy, reshard_after_forward)
        got = run[strategy]["collectives"]
        for kind in ("all_reduce", "all_gather", "reduce_scatter"):
            if not est["elements"][kind] and not got["calls"][kind]:
                continue
            rows.append(
                {
                    "strategy": strategy,
                    "collective": kind,
                    "calls_formula": est["calls"][kind],
                    "calls_measured": got["calls"][kind],
                    "elements_formula": est["elements"][kind],
                    "elements_measured": got["elements"][kind],
                    "sent_bytes_per_rank": est["sent_bytes"][kind],
                }
            )
    return rows
