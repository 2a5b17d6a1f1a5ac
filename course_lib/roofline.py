"""The limits of this machine and what a model asks of them: FLOPs, bytes, MFU and MBU.

Two probes measure the roof of the roofline for the current device and thread count:

* ``bandwidth_probe()``: a GEMV sweep over weight sizes. Each size cycles through enough
  *distinct* weights that together they are larger than the last-level cache, so every GEMV reads
  its weight from memory (cache-cold), as a decode step reads each layer's weight once. The best
  size's GB/s is the memory roof.
* ``peak_flops_probe()``: a square GEMM, the best achievable FLOP/s (the compute roof).

Two counts say what a model needs:

* ``flops_per_token(cfg, seq_len)``: training FLOPs per token, nanoGPT's ``estimate_mfu`` / PaLM
  appendix B: ``6 N + 12 L H Q T`` (N parameters, L layers, H query heads, Q head dim, T sequence
  length). 6N is forward (2N) + backward (4N) of every weight; 12LHQT is attention's QK^T and AV,
  forward + backward, counted over the full T x T square as PaLM does (the causal mask halves
  the useful part; the convention does not).
* ``decode_bytes_per_step(cfg, context, batch)``: bytes one decode step reads, every weight once
  (the matrices, at their storage width, plus their scales) and the KV cache of every row.

``mfu = achieved FLOP/s / peak``; ``mbu = achieved bytes/s / measured bandwidth``. A decode step
of batch B does 2 FLOPs per weight per row and reads each weight once: an arithmetic intensity of
``2 B / bytes_per_weight`` FLOPs per byte (B/2 for fp32), far left of the ridge point
(peak / bandwidth) for small B: bandwidth-bound. A training step or a prefill multiplies each
weight by hundreds of tokens: right of the ridge, compute-bound.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .memory import _native_stderr_silenced
from .util import cdiv

MiB = 2**20
DEFAULT_LLC = 32 * MiB  # when the cache size cannot be read


# --------------------------------------------------------------------------------------------
# Counting: FLOPs and bytes
# --------------------------------------------------------------------------------------------
def num_params(cfg: ModelConfig) -> int:
    """Parameters of ``DIYModel(cfg)``, counted without building it (tied embeddings once)."""
    d, L, hd = cfg.d_model, cfg.n_layers, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, o; k, v
    mlp = 3 * d * cfg.ffn_hidden
    per_layer = attn + mlp + 2 * d  # + two RMSNorm weights
    emb = cfg.vocab_size * d
    return L * per_layer + d + emb * (1 if cfg.tie_embeddings else 2)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights a forward multiplies by: every linear of the blocks plus the output head
    (an untied input embedding is a lookup, not a matmul; norm weights are not matrices)."""
    d, hd = cfg.d_model, cfg.head_dim
    per_layer = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2 + 3 * d * cfg.ffn_hidden
    return cfg.n_layers * per_layer + cfg.vocab_size * d


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training (forward + backward) attention FLOPs per token: ``12 L H Q T``."""
    return 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token, nanoGPT/PaLM: ``6 N + 12 L H Q T``.

    N is nanoGPT's parameter count (``num_params``; with tied embeddings the table counts once,
    as the output head's matmul; position tables: none here, RoPE has no parameters)."""
    n = num_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n + attention_flops_per_token(cfg, seq_len)


def forward_flops_per_token(cfg: ModelConfig, context: int) -> int:
    """One forward of one token that attends to ``context`` keys: ``2 N_matmul + 4 L H Q context``."""
    return 2 * matmul_params(cfg) + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context


def weight_bytes(cfg: ModelConfig, weight_bits: int = 32, group_size: int | None = None, scale_bytes: int = 4) -> int:
    """Bytes of the matrices a decode step reads, at ``weight_bits`` per weight, plus scales:
    one per output row for int8 (``group_size=None``), one per ``group_size`` weights for int4;
    plus the norm vectors (fp32 in a quantized model). 32 or 16 bits: no scales, norms at that width."""
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.ffn_hidden
    shapes = [
        (cfg.n_heads * hd, d),
        (cfg.n_kv_heads * hd, d),
        (cfg.n_kv_heads * hd, d),
        (d, cfg.n_heads * hd),
        (f, d),
        (f, d),
        (d, f),
    ] * cfg.n_layers + [(cfg.vocab_size, d)]
    total = 0
    for out_f, in_f in shapes:
        total += out_f * in_f * weight_bits // 8
        if weight_bits < 16:
            groups = 1 if group_size is None else cdiv(in_f, group_size)
            total += out_f * groups * scale_bytes
    norm_bytes = 4 if weight_bits < 16 else weight_bits // 8  # quantized models keep their norms in fp32
    return total + (2 * cfg.n_layers + 1) * d * norm_bytes


def kv_bytes_per_step(cfg: ModelConfig, context: int, batch: int = 1, kv_bytes: int = 4) -> int:
    """K and V read by one decode step: every layer, every row, ``context`` cached positions."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * context * batch * kv_bytes


def decode_bytes_per_step(
    cfg: ModelConfig,
    context: int,
    batch: int = 1,
    weight_bits: int = 32,
    group_size: int | None = None,
    kv_bytes: int = 4,
) -> int:
    """Bytes one decode step reads: the weights once (shared by the whole batch) + each row's KV.

    ``context`` is the number of key positions each row attends to. Activations are left out
    (a few KB per row)."""
    return weight_bytes(cfg, weight_bits, group_size) + kv_bytes_per_step(cfg, context, batch, kv_bytes)


def prefill_bytes(
    cfg: ModelConfig,
    prompt_len: int,
    batch: int = 1,
    weight_bits: int = 32,
    group_size: int | None = None,
    kv_bytes: int = 4,
) -> int:
    """Bytes a prefill must move at least: the weights once and the KV cache it writes."""
    return weight_bytes(cfg, weight_bits, group_size) + kv_bytes_per_step(cfg, prompt_len, batch, kv_bytes)


def prefill_flops(cfg: ModelConfig, prompt_len: int, batch: int = 1) -> int:
    """FLOPs of a causal prefill: token i attends to i + 1 keys."""
    attn = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * prompt_len * (prompt_len + 1) // 2
    return batch * (2 * matmul_params(cfg) * prompt_len + attn)


def train_step_bytes(cfg: ModelConfig, param_bytes: int = 4) -> int:
    """A lower bound on one fp32 AdamW training step's memory traffic, activations left out: every
    parameter read by the forward and the backward, its gradient written and read, AdamW reading
    and writing the parameter and both moments: 10 accesses of ``param_bytes`` per parameter."""
    return 10 * param_bytes * num_params(cfg)


def decode_flops_per_step(cfg: ModelConfig, context: int, batch: int = 1) -> int:
    """FLOPs of one decode step: ``batch`` forwards of one token over ``context`` keys."""
    return batch * forward_flops_per_token(cfg, context)


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak."""
    return tokens_per_s * flops_per_tok / peak_flops


def mbu(steps_per_s: float, bytes_per_step: float, bandwidth: float) -> float:
    """Model bandwidth utilisation: bytes/s a decode needs at this speed over the measured bandwidth."""
    return steps_per_s * bytes_per_step / bandwidth


# --------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def last_level_cache_bytes(device: torch.device | str = "cpu") -> int:
    """Largest cache of the device: CPU from /sys (Linux), CUDA from the device properties."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or DEFAULT_LLC
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            txt = open(path).read().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": MiB, "G": 2**30}.get(txt[-1:], 1)
        try:
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or DEFAULT_LLC


@dataclass
class BandwidthPoint:
    weight_bytes: int  # one weight matrix
    copies: int  # distinct weights cycled through (together > the last-level cache)
    gb_s: float  # best of the repeats
    median_gb_s: float


@torch.no_grad()
def bandwidth_probe(
    sizes_mib: Sequence[float] | None = None,
    *,
    quick: bool = False,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    llc_bytes: int | None = None,
    min_seconds: float = 0.02,
) -> list[BandwidthPoint]:
    """GEMV ``W @ x`` over square weights of each size (MiB), cache-cold.

    For each size, ``copies`` distinct weights whose total is at least twice the last-level cache
    are multiplied in turn, so no weight is still cached when it is read again. Each repeat times
    one pass over all copies (several passes when one pass is shorter than ``min_seconds``).
    ``quick``: tiny sizes and a small footprint (a smoke test, not the roof). Uses no random numbers.
    """
    device = torch.device(device)
    llc = llc_bytes or last_level_cache_bytes(device)
    if sizes_mib is None:
        sizes_mib = (1, 4) if quick else (4, 16, 64, 256)
    footprint = (4 * MiB) if quick else 2 * llc
    esize = torch.empty((), dtype=dtype).element_size()
    sync = _sync(device)
    out = []
    for mib in sizes_mib:
        n = max(16, int(math.sqrt(mib * MiB / esize)))
        wbytes = n * n * esize
        copies = max(2, cdiv(footprint, wbytes) + 1)
        ws = [torch.full((n, n), 1e-3, dtype=dtype, device=device) for _ in range(copies)]
        x = torch.full((n,), 1e-3, dtype=dtype, device=device)
        for w in ws[:2]:
            torch.mv(w, x)  # warm-up: first-call dispatch and allocation
        sync()
        rates = []
        for _ in range(repeats):
            passes, t = 0, 0.0
            t0 = time.perf_counter()
            while passes == 0 or t < min_seconds:
                for w in ws:
                    torch.mv(w, x)
                sync()
                passes += 1
                t = time.perf_counter() - t0
            rates.append(passes * copies * wbytes / t / 1e9)
        out.append(BandwidthPoint(wbytes, copies, max(rates), statistics.median(rates)))
        del ws
    return out


def best_bandwidth(points: Sequence[BandwidthPoint]) -> float:
    """The memory roof (bytes/s): the best GEMV rate of the sweep."""
    return max(p.gb_s for p in points) * 1e9


@torch.no_grad()
def peak_flops_probe(
    n: int | None = None,
    *,
    quick: bool = False,
    device="cpu",
    dtype: torch.dtype | None = None,
    repeats: int = 5,
    min_seconds: float = 0.02,
) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` GEMM (``2 n^3`` FLOPs) on this device and thread count.

    Default dtype: fp32 on CPU, bf16 on CUDA. Uses no random numbers (constant inputs)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = (256 if quick else 1024) if device.type == "cpu" else (1024 if quick else 8192)
    a = torch.full((n, n), 1e-3, dtype=dtype, device=device)
    b = torch.full((n, n), 1e-3, dtype=dtype, device=device)
    c = torch.empty((n, n), dtype=dtype, device=device)
    sync = _sync(device)
    torch.mm(a, b, out=c)
    sync()
    best = 0.0
    for _ in range(repeats):
        k, t = 0, 0.0
        t0 = time.perf_counter()
        while k == 0 or t < min_seconds:
            torch.mm(a, b, out=c)
            k += 1
            if device.type == "cuda" and k % 8:
                continue
            sync()
            t = time.perf_counter() - t0
        sync()
        t = time.perf_counter() - t0
        best = max(best, k * 2 * n**3 / t)
    return best


@functools.cache
def _cached_peak(device_type: str, threads: int, dtype_name: str) -> float:
    return peak_flops_probe(
        device=device_type, dtype=getattr(torch, dtype_name), n=512 if device_type == "cpu" else None, repeats=3
    )


def measured_peak_flops(device="cpu", dtype: torch.dtype | None = None) -> float:
    """``peak_flops_probe`` measured once per process (per device type, thread count and dtype):
    what the training log divides by when no peak is configured. A short probe (~0.1 s)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return _cached_peak(device.type, torch.get_num_threads(), str(dtype).replace("torch.", ""))


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def profiled(**kwargs):
    """``torch.profiler.profile(**kwargs)`` without the ``USDT ... profiler_start/stop`` lines the CPU
    profiler writes to stderr from C++ when it starts and stops (the profiled code keeps its stderr)."""
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _native_stderr_silenced():
        prof.start()
    try:
        yield prof
    finally:
        with _native_stderr_silenced():
            prof.stop()


def profile_flops(prof) -> int:
    """FLOPs the profiler counted (``with_flops=True``): its per-operator formulas (matmuls, and
    elementwise ops it knows). The fused CPU attention kernel has no formula: profile attention on
    SDPA's math backend (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``) to count it."""
    return int(sum(e.flops for e in prof.key_averages() if e.flops))


_FRAME = re.compile(r"(?:^|/)(course_lib/[\w/]+\.py)\((\d+)\): (\w+)")
_SKIP = ("course_lib/roofline.py", "course_lib/lab/")


def hotspots(prof, n: int = 3) -> list[dict]:
    """The ``n`` functions of course_lib whose operators took the most self CPU time in a profile made
    by ``stack_profiled()``: each operator's self time goes to the innermost course_lib frame that
    called it, named by file, the line where the function starts, and its name
    (``course_lib/model.py:136 forward``). Returns ``[{"where", "ms", "share", "ops"}]``."""
    by: dict = {}
    total = 0.0
    for e in prof.events():
        t = e.self_cpu_time_total
        if not t or not e.name.startswith(("aten::", "quantized::", "fbgemm", "mkl")):
            continue  # Python frames recorded as events (with_stack) would count their operators twice
        total += t
        for frame in e.stack or ():
            m = _FRAME.search(frame)
            if m and not m.group(1).startswith(_SKIP):
                where = f"{m.group(1)}:{m.group(2)} {m.group(3)}"
                rec = by.setdefault(where, {"where": where, "us": 0.0, "ops": {}})
                rec["us"] += t
                rec["ops"][e.name] = rec["ops"].get(e.name, 0.0) + t
                break
    top = sorted(by.values(), key=lambda r: -r["us"])[:n]
    return [
        {
            "where": r["where"],
            "ms": r["us"] / 1e3,
            "share": r["us"] / total if total else 0.0,
            "ops": ", ".join(k for k, _ in sorted(r["ops"].items(), key=lambda kv: -kv[1])[:2]),
        }
        for r in top
    ]


def stack_profiled(**kwargs):
    """``profiled(...)`` recording Python stacks (what ``hotspots`` reads)."""
    from torch.profiler import ProfilerActivity

    return profiled(
        activities=[ProfilerActivity.CPU],
        with_stack=True,
        experimental_config=torch._C._profiler._ExperimentalConfig(verbose=True),
        **kwargs,
    )
