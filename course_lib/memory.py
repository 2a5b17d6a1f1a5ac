"""How much memory does a training step need? Estimate it, measure it, find the largest batch.

``estimate(model_cfg, batch_size, seq_len, dtype, optimizer)`` adds up, in bytes:

* **params**: every parameter in fp32 (the master copy; autocast does not change it);
* **grads**: one fp32 gradient per parameter (they exist from the backward pass until
  ``zero_grad(set_to_none=True)``);
* **optimizer state**: AdamW keeps two fp32 tensors per parameter (exp_avg, exp_avg_sq), SGD
  with momentum one, plain SGD none;
* **autocast weight copies**: under bf16/fp16 autocast every matrix weight is cast to 16 bits
  once per forward and the copy is kept for the backward pass;
* **activations**: the tensors autograd saves for the backward pass, counted layer by layer
  from ``DIYModel``'s code (the list is in ``_activation_terms``), plus the logits and the
  cross-entropy buffers, which for a small model with a 258-token vocabulary are a large share.

The *peak* is not the sum of all of these: gradients are created while activations are freed
during the backward pass. The estimate models the two moments that compete for the peak:
the start of the backward pass (weights + optimizer state + all activations + the loss
gradient buffers) and the optimizer step (weights + optimizer state + all gradients).
With ``activation_checkpointing=True`` the forward keeps only each block's input, and a third
kind of moment competes: the backward's recompute of one block (``_checkpointed_phases``).

``measure_peak(...)`` runs real training steps and reports the real peak:

* on CUDA, ``torch.cuda.max_memory_allocated()`` (the caching allocator's own counter);
* on CPU there is no such counter, so we record every allocation and free of PyTorch's CPU
  allocator with ``torch.profiler.profile(profile_memory=True)``: each ``[memory]`` event
  carries the signed number of bytes, and the running sum over time is the live memory. Its
  maximum is the peak. (The process RSS is no good for this: it includes the Python
  interpreter, libraries and freed-but-cached pages, and never goes down.)

``step_timer(...)`` times training steps of one fixed model and batch (seconds per step), for
ratios measured in interleaved rounds: with vs without activation checkpointing (lesson 4.0.5),
fp32 vs bf16 autocast (lesson 4.1.5).

``find_max_batch_size(budget_bytes, ...)`` searches the largest batch whose *estimated* peak
fits the budget (the estimate is monotone in the batch size, so a doubling + bisection search
is exact), and can confirm the answer with ``measure_peak``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import ModelConfig
from .model import DIYModel
from .util import cdiv

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}
MiB = 2**20


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts of ``DIYModel(cfg)`` by kind, from the config alone."""
    d, f, hd = cfg.d_model, cfg.ffn_hidden, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, o + k, v
    mlp = 3 * d * f
    norms = 2 * d
    embed = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    matrices = cfg.n_layers * (attn + mlp) + embed + head
    return {
        "matrices": matrices,
        "vectors": cfg.n_layers * norms + d,
        "embedding": embed,
        "total": matrices + cfg.n_layers * norms + d,
    }


@dataclass
class MemoryEstimate:
    """Bytes by category, and the modelled peak of one training step."""

    params: int
    grads: int
    optimizer_state: int
    autocast_copies: int
    activations: int
    loss_buffers: int
    buffers: int
    peak: int
    peak_phase: str
    detail: dict[str, int] = field(default_factory=dict)

    def breakdown(self) -> dict[str, float]:
        """MiB per category (for tables)."""
        keys = (
            "params",
            "grads",
            "optimizer_state",
            "autocast_copies",
            "activations",
            "loss_buffers",
            "buffers",
            "peak",
        )
        return {k: getattr(self, k) / MiB for k in keys}

    def rule_of_thumb(self) -> dict[str, float]:
        """The naive answers: weights only, and the '16 bytes per parameter' AdamW rule."""
        n = self.params // 4
        return {
            "weights_fp32_MiB": n * 4 / MiB,
            "weights_fp16_MiB": n * 2 / MiB,
            "adamw_16B_per_param_MiB": n * 16 / MiB,
        }


def _activation_terms(
    cfg: ModelConfig, n_tok: int, batch_size: int, seq_len: int, act_bytes: int, amp: bool
) -> dict[str, int]:
    """Bytes of the tensors autograd saves for backward, per category, for all layers.

    Read off ``course_lib.model`` and checked tensor by tensor with
    ``torch.autograd.graph.saved_tensors_hooks`` (lesson 4.0.5 shows how). N = tokens in the
    batch, d = d_model, f = ffn_hidden, a = bytes of the activation dtype (4 fp32, 2 bf16/fp16):

    per block
      RMSNorm x2   input and normalised x (fp32, RMSNorm computes in fp32)   2 x 2*N*d*4
                   + its output, as fed to the next matmul                    2 x N*d*a
      attention    q and k after RoPE, v (k, v after the GQA repeat), the     4 x N*d*a
                   SDPA output (flash kernel: no T x T matrix is stored);
                   autocast adds 3 more casts of size N*d                     (+3 x N*d*a)
                   log-sum-exp of the flash kernel, N*h fp32; rsqrt of the norms
      MLP          gate out, silu(gate), up out, silu*up                      4 x N*f*a
    after the blocks: the final norm (as above), RoPE cos/sin gathered at the positions
    (fp32, and per block a 16-bit cast under autocast), and log_softmax of the logits (fp32:
    the loss upcasts the logits) for the cross-entropy backward.
    """
    d, f, h, hd, V = cfg.d_model, cfg.ffn_hidden, cfg.n_heads, cfg.head_dim, cfg.vocab_size
    L, N, B, T = cfg.n_layers, n_tok, batch_size, seq_len
    a, fp = act_bytes, 4
    return {
        "rmsnorm": (L * 2 + 1) * (2 * N * d * fp + N * d * a + N * fp),
        "attention": L * ((4 + (3 if amp else 0)) * N * d * a + N * h * fp),
        "mlp": L * 4 * N * f * a,
        "rope_tables": 2 * B * T * hd * fp + (L * 4 * B * T * hd * a if amp else 0),
        "log_softmax": N * V * fp,
    }


def _checkpointed_phases(
    model_cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    a: int,
    amp: bool,
    terms: dict[str, int],
    counts: dict[str, int],
    static: int,
    autocast_copies: int,
    loss_buffers: int,
) -> tuple:
    """Activation checkpointing (one ``checkpoint`` per block): what is kept, and the phases
    that compete for the peak. Returns ``(kept_activations, detail, {phase: bytes})``.

    Derived from ``_activation_terms`` (the same per-tensor list, regrouped). N = B*T tokens,
    L layers, d = d_model, f = ffn_hidden, a = activation bytes, V = vocab_size:

    kept between forward and backward
      block inputs       L x N*d*4 (the residual stream is fp32, also under autocast)
      outside the blocks the final RMSNorm, RoPE cos/sin and log_softmax, as without AC
    one block, recomputed in the backward (only one block at a time)
      per_block = (2 RMSNorms + attention + MLP terms) / L, + 4 RoPE casts under autocast
      + the MLP backward's gradient buffers: d(down_proj input), d(silu(gate)), d(up), each
        N*f*a, while silu(gate)*up (consumed by down_proj's backward) is already freed: 2 x N*f*a
      + under autocast, the block's 16-bit weight copies made again (the autocast cache of the
        forward is gone) and the lm_head's copy, which the graph still holds
    The backward walks the blocks from the last to the first: at block j (0 = last), the
    gradients of the head and of j+1 blocks exist and L-j block inputs are still held. That is
    linear in j, so the largest is at one of the two ends (j = 0 or j = L-1).
    """
    cfg = model_cfg
    L, N, d, f, V, hd = cfg.n_layers, batch_size * seq_len, cfg.d_model, cfg.ffn_hidden, cfg.vocab_size, cfg.head_dim
    one_norm = terms["rmsnorm"] // (2 * L + 1)
    per_block = (
        2 * one_norm + terms["attention"] // L + terms["mlp"] // L + (4 * batch_size * seq_len * hd * a if amp else 0)
    )
    rope = 2 * batch_size * seq_len * hd * 4
    inputs = L * N * d * 4
    kept = inputs + one_norm + rope + terms["log_softmax"]
    block_matrices = (counts["matrices"] - counts["embedding"] - (0 if cfg.tie_embeddings else V * d)) // L
    block_grads = (block_matrices + 2 * d) * 4
    head_grads = (V * d + d) * 4  # lm_head (tied or not) + final norm weight
    mlp_grad_buffers = 2 * N * f * a
    copies = (block_matrices + V * d) * a if amp else 0
    recompute = {
        j: static
        + head_grads
        + (j + 1) * block_grads
        + (L - j) * N * d * 4
        + rope
        + per_block
        + mlp_grad_buffers
        + copies
        for j in (0, L - 1)
    }
    phases = {
        "backward start": static + autocast_copies + kept + loss_buffers,
        "recompute, last block": recompute[0],
        "recompute, first block": recompute[L - 1],
    }
    detail = {
        "block_inputs": inputs,
        "final_rmsnorm": one_norm,
        "rope_tables": rope,
        "log_softmax": terms["log_softmax"],
        "one_block_recomputed": per_block,
        "mlp_grad_buffers": mlp_grad_buffers,
    }
    return kept, detail, phases


def estimate(
    model_cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """Modelled memory of one training step of ``DIYModel`` (bytes), as a breakdown and a peak.

    ``activation_checkpointing=True`` models ``model.set_activation_checkpointing(True)``:
    ``activations`` is then what the forward keeps (each block's input plus the tensors outside
    the blocks), and the peak also considers the backward's recompute of one block at a time
    (formula in ``_checkpointed_phases``).
    """
    if dtype not in BYTES:
        raise ValueError(f"dtype={dtype!r}: use one of {sorted(BYTES)}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer={optimizer!r}: use one of {sorted(OPTIMIZER_STATES)}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size}, seq_len={seq_len}: both must be >= 1")
    amp = dtype != "fp32"
    a = BYTES[dtype]
    counts = count_params(model_cfg)
    n = counts["total"]
    params = n * 4
    grads = n * 4
    opt = OPTIMIZER_STATES[optimizer] * n * 4
    autocast_copies = counts["matrices"] * a if amp else 0
    buffers = 2 * model_cfg.max_seq_len * model_cfg.head_dim * 4  # RoPE cos/sin tables
    N, V = batch_size * seq_len, model_cfg.vocab_size
    terms = _activation_terms(model_cfg, N, batch_size, seq_len, a, amp)
    # start of backward: d(loss)/d(log_softmax) and d(logits) in fp32 exist next to everything else
    loss_buffers = 2 * N * V * 4
    static = params + opt + buffers
    if activation_checkpointing:
        activations, detail, phases = _checkpointed_phases(
            model_cfg, batch_size, seq_len, a, amp, terms, counts, static, autocast_copies, loss_buffers
        )
    else:
        activations, detail = sum(terms.values()), terms
        phases = {"backward start": static + autocast_copies + activations + loss_buffers}
    phases["optimizer step"] = static + grads
    phase = max(phases, key=phases.get)
    return MemoryEstimate(
        params=params,
        grads=grads,
        optimizer_state=opt,
        autocast_copies=autocast_copies,
        activations=activations,
        loss_buffers=loss_buffers,
        buffers=buffers,
        peak=phases[phase],
        peak_phase=phase,
        detail=detail,
    )


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _native_stderr_silenced():
    """torch's CPU profiler prints ``USDT ... profiler_start`` / ``profiler_stop`` lines from C++
    straight to file descriptor 2 (no logger or environment variable turns them off), which would
    land in every notebook that measures memory. Point fd 2 at /dev/null only while the profiler
    starts and stops; the measured code itself runs with stderr untouched."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_from_profiler(prof) -> int:
    """Peak of the running sum of the CPU allocator's signed allocation sizes."""
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda t: t[0])
    live = peak = 0
    for _, b in events:
        live += b
        peak = max(peak, live)
    return peak


def _make_optimizer(model: torch.nn.Module, optimizer: str) -> torch.optim.Optimizer:
    if optimizer in ("adamw", "adam"):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9 if optimizer == "sgd_momentum" else 0.0)


def _fixed_batch(
    model_cfg: ModelConfig, batch_size: int, seq_len: int, seed: int, dev: torch.device, n: int
) -> list[torch.Tensor]:
    """``n`` random token batches (inputs, then targets) drawn in turn from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(256, model_cfg.vocab_size)
    return [torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(dev) for _ in range(n)]


def _autocast(dev: torch.device, dtype: str):
    """Autocast to ``dtype`` ("bf16" or "fp16") on ``dev``; no autocast for "fp32"."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def _model_and_optimizer(
    model_cfg: ModelConfig, seed: int, dev: torch.device, activation_checkpointing: bool, optimizer: str
) -> tuple[DIYModel, torch.optim.Optimizer]:
    """``DIYModel(model_cfg)`` initialised from ``seed`` on ``dev``, and its optimizer."""
    torch.manual_seed(seed)
    model = DIYModel(model_cfg).to(dev).set_activation_checkpointing(activation_checkpointing)
    return model, _make_optimizer(model, optimizer)


def _train_steps(model, opt, x: torch.Tensor, y: torch.Tensor, amp, steps: int) -> None:
    """``steps`` plain training steps (forward under ``amp``, backward, AdamW step, free grads)."""
    for _ in range(steps):
        with amp:
            loss = model(x, targets=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def measure_peak(
    model_cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    activation_checkpointing: bool = False,
) -> dict:
    """Real peak bytes of ``steps`` training steps, counted from model creation on.

    Returns ``{"peak": bytes, "method": ..., "seconds": ...}``. Two steps: the first creates the
    optimizer state, the second runs with it in place (the steady state).
    ``activation_checkpointing=True`` trains with ``model.set_activation_checkpointing(True)``.
    """
    dev = torch.device(device)
    x, y = _fixed_batch(model_cfg, batch_size, seq_len, seed, dev, 2)
    amp = _autocast(dev, dtype)

    def run() -> None:
        model, opt = _model_and_optimizer(model_cfg, seed, dev, activation_checkpointing, optimizer)
        _train_steps(model, opt, x, y, amp, steps)
        del model, opt

    t0 = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        run()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base - x.nbytes - y.nbytes
        method = "torch.cuda.max_memory_allocated"
    else:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _native_stderr_silenced():
            prof.start()
        try:
            run()
        finally:
            with _native_stderr_silenced():
                prof.stop()
        peak = _cpu_peak_from_profiler(prof)
        method = "torch.profiler CPU allocation events"
    return {"peak": int(peak), "method": method, "seconds": time.perf_counter() - t0}


def step_timer(
    model_cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    activation_checkpointing: bool = False,
    steps: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> Callable[[], float]:
    """A callable that runs ``steps`` training steps (forward, backward, optimizer step) of one
    model on one fixed batch and returns the seconds per step (CPU or CUDA, synchronised).

    Build one per candidate, call each once to warm up (the first call pays for allocations
    and lazy initialisation), then time them in turn with ``course_lib.lab.measure.interleaved_rounds``,
    so that no candidate gets the machine's quiet moment alone."""
    dev = torch.device(device)
    (x,) = _fixed_batch(model_cfg, batch_size, seq_len, seed, dev, 1)
    model, opt = _model_and_optimizer(model_cfg, seed, dev, activation_checkpointing, optimizer)
    amp = _autocast(dev, dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run() -> float:
        sync()
        t0 = time.perf_counter()
        _train_steps(model, opt, x, x, amp, steps)
        sync()
        return (time.perf_counter() - t0) / steps

    return run


def find_max_batch_size(
    budget_bytes: int,
    model_cfg: ModelConfig,
    seq_len: int,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    limit: int = 1 << 16,
    activation_checkpointing: bool = False,
) -> int:
    """Largest batch size whose estimated peak fits ``budget_bytes`` (0 if even batch 1 does not)."""

    def fits(b: int) -> bool:
        return estimate(model_cfg, b, seq_len, dtype, optimizer, activation_checkpointing).peak <= budget_bytes

    if not fits(1):
        return 0
    lo = 1
    while lo * 2 <= limit and fits(lo * 2):  # double until it does not fit
        lo *= 2
    hi = min(lo * 2, limit + 1)  # fits(lo), not fits(hi) (or hi past the limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def compare(
    model_cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    device: str = "cpu",
    name: str = "",
    activation_checkpointing: bool = False,
) -> dict:
    """One row of the estimate-vs-measured table."""
    est = estimate(model_cfg, batch_size, seq_len, dtype, optimizer, activation_checkpointing)
    got = measure_peak(
        model_cfg, batch_size, seq_len, dtype, optimizer, device, activation_checkpointing=activation_checkpointing
    )
    err = (est.peak - got["peak"]) / got["peak"]
    return {
        "model": name or f"d{model_cfg.d_model}xL{model_cfg.n_layers}",
        "params": est.params // 4,
        "batch": batch_size,
        "seq": seq_len,
        "dtype": dtype,
        "ac": activation_checkpointing,
        "estimate_MiB": est.peak / MiB,
        "measured_MiB": got["peak"] / MiB,
        "error_pct": 100 * err,
        "within_10pct": abs(err) <= 0.10,
        "phase": est.peak_phase,
    }


# ------------------------------------------------------------------------------------------
# Per-rank state under DDP and FSDP (lesson 4.1.6)
# ------------------------------------------------------------------------------------------
# What one rank holds when the model is trained on ``world_size`` processes:
#
# * DDP: every rank holds the whole model, the whole gradient and the whole optimizer state;
# * FSDP (``course_lib.fsdp.apply_fsdp``, FSDP2's ``fully_shard``, ZeRO-3 style): every
#   parameter is a DTensor sharded on dim 0, its gradient and its optimizer state too. A
#   parameter of ``n0`` rows is cut like ``torch.chunk``: ``c = ceil(n0 / world)`` rows per rank,
#   rank ``r`` holds ``max(0, min(c, n0 - r * c))`` of them (the last ranks hold fewer, possibly
#   none). Internally ``fully_shard`` pads every rank's parameter storage to ``c`` rows so that
#   the all-gather moves equal pieces; the padding belongs to no parameter and is not counted
#   here (nor by ``course_lib.fsdp.rank_state_bytes``, which counts ``DTensor.to_local()``).
#
# Not sharded on either strategy: AdamW's 0-dim ``step`` counter, one fp32 scalar per parameter
# tensor on every rank. While a unit runs FSDP all-gathers it: ``gathered_unit`` is the largest
# block's full parameters (freed again after its forward with ``reshard_after_forward=True``,
# gathered again for its backward), ``gathered_root`` the root's (embedding, final norm, and
# the output projection when it is not tied), which ``apply_fsdp`` keeps gathered from the
# forward until the end of the backward.
FSDP_STRATEGIES = ("ddp", "fsdp")
STEP_COUNTER_BYTES = 4  # AdamW's state["step"]: a 0-dim float32 tensor per parameter


def param_shapes(model_cfg: ModelConfig) -> dict[str, tuple]:
    """``{name: shape}`` of every parameter of ``DIYModel(model_cfg)``, a tied one once. Built on
    the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = DIYModel(model_cfg)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def shard_rows(n0: int, world_size: int, rank: int) -> int:
    """Rows of a dim-0 size ``n0`` tensor that ``rank`` holds under FSDP's dim-0 sharding."""
    c = cdiv(n0, world_size)
    return max(0, min(c, n0 - rank * c))


def _check_rank_args(world_size: int, rank: int, strategy: str, optimizer: str, dtype: str) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be an integer >= 1")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: must be in 0..{world_size - 1} for world_size={world_size}")
    if strategy not in FSDP_STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {FSDP_STRATEGIES}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer={optimizer!r}: use one of {sorted(OPTIMIZER_STATES)}")
    if dtype not in BYTES:
        raise ValueError(f"dtype={dtype!r}: use one of {sorted(BYTES)}")


def per_rank_state_bytes(
    model_cfg: ModelConfig,
    world_size: int,
    strategy: str = "ddp",
    optimizer: str = "adamw",
    dtype: str = "fp32",
    rank: int = 0,
) -> dict[str, int]:
    """Bytes of model state that ``rank`` of ``world_size`` holds after an optimizer step.

    ``dtype`` is the dtype the parameters are stored in (the course trains fp32 parameters;
    autocast does not change them); gradients and AdamW's moments have the same dtype.
    Returns ``{"params", "grads", "optimizer", "total", "gathered_unit", "gathered_root"}``:
    ``total`` is the state that stays between steps (params + grads + optimizer, what
    ``course_lib.fsdp.rank_state_bytes`` measures); the two ``gathered_*`` terms are FSDP's
    transient full copies (0 under DDP). Rank 0 holds the largest shards.
    """
    _check_rank_args(world_size, rank, strategy, optimizer, dtype)
    b = BYTES[dtype]
    shapes = param_shapes(model_cfg)
    if strategy == "fsdp":  # every parameter of DIYModel has at least one dimension
        held = sum(math.prod(s[1:]) * shard_rows(s[0], world_size, rank) for s in shapes.values())
    else:
        held = sum(math.prod(s) for s in shapes.values())
    params = held * b
    counters = STEP_COUNTER_BYTES * len(shapes) if optimizer in ("adamw", "adam") else 0
    opt = OPTIMIZER_STATES[optimizer] * params + counters
    gathered_unit = gathered_root = 0
    if strategy == "fsdp":
        sizes = {u: sum(math.prod(shapes[n]) for n in names) * b for u, names in fsdp_units(model_cfg).items()}
        gathered_root = sizes.pop("root")
        gathered_unit = max(sizes.values(), default=0)
    return {
        "params": params,
        "grads": params,
        "optimizer": opt,
        "total": 2 * params + opt,
        "gathered_unit": gathered_unit,
        "gathered_root": gathered_root,
    }


def fsdp_units(model_cfg: ModelConfig) -> dict[str, list]:
    """The FSDP units ``apply_fsdp`` makes: ``{"layers.0": [param names], ..., "root": [...]}``
    (one unit per transformer block, the rest in the root)."""
    units: dict[str, list] = {}
    for name in param_shapes(model_cfg):
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "layers" else "root"
        units.setdefault(key, []).append(name)
    units.setdefault("root", [])
    return units


def collective_bytes_per_step(
    model_cfg: ModelConfig,
    world_size: int,
    strategy: str = "ddp",
    reshard_after_forward: bool = True,
    dtype: str = "fp32",
) -> dict:
    """The collectives of one training step and the bytes each rank sends, from the formula.

    DDP: one all-reduce of every gradient (in buckets of about 25 MB). FSDP: per block an
    all-gather in the forward and, with ``reshard_after_forward``, another in the backward; the
    root once (kept until the end of the backward); one reduce-scatter of the gradients per unit.
    ``elements`` is the full size that passes through each kind of collective (all-gather:
    output, reduce-scatter: input); under FSDP that is the *padded* size, every shard padded to
    ``ceil(n0 / world_size)`` rows, so with dimensions that do not divide by the world size a
    little more than the parameters moves. ``sent_bytes`` uses the ring algorithm: an all-gather or a
    reduce-scatter of S bytes sends (W-1)/W * S per rank, an all-reduce 2 (W-1)/W * S (it is a
    reduce-scatter followed by an all-gather). ``calls`` is exact for FSDP; DDP's number of
    all-reduce calls is its number of buckets (``None`` here: DDP decides it at run time).
    """
    _check_rank_args(world_size, 0, strategy, "adamw", dtype)
    b, w = BYTES[dtype], world_size
    shapes = param_shapes(model_cfg)
    total = sum(math.prod(s) for s in shapes.values())
    # FSDP moves equal pieces: every rank's shard padded to ceil(n0 / w) rows
    padded = {n: cdiv(s[0], w) * w * math.prod(s[1:]) for n, s in shapes.items()}
    if strategy == "ddp":
        elements = {"all_reduce": total, "all_gather": 0, "reduce_scatter": 0}
        calls = {"all_reduce": None, "all_gather": 0, "reduce_scatter": 0}
    else:
        units = fsdp_units(model_cfg)
        sizes = {u: sum(padded[n] for n in names) for u, names in units.items()}
        blocks = [u for u in units if u != "root"]
        per_block = 2 if reshard_after_forward else 1
        gathered = sizes["root"] + per_block * sum(sizes[u] for u in blocks)
        elements = {"all_reduce": 0, "all_gather": gathered, "reduce_scatter": sum(sizes.values())}
        calls = {"all_reduce": 0, "all_gather": 1 + per_block * len(blocks), "reduce_scatter": 1 + len(blocks)}
    frac = (w - 1) / w
    sent = {
        "all_reduce": 2 * frac * elements["all_reduce"] * b,
        "all_gather": frac * elements["all_gather"] * b,
        "reduce_scatter": frac * elements["reduce_scatter"] * b,
    }
    return {
        "elements": elements,
        "calls": calls,
        "sent_bytes": {k: int(round(v)) for k, v in sent.items()},
        "sent_total": int(round(sum(sent.values()))),
    }
