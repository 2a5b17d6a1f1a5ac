"""Weight quantization: int8 per-channel, int4 group-wise (packed), GPTQ-style int4, dynamic int8.

Weight-only quantization stores each ``nn.Linear`` weight ``W`` (out x in) as small integers
``q`` plus floating-point scales, ``W ~= q * scale``; activations stay in floating point and the
weight is dequantized when used. What it buys: a smaller file and less memory (the number
that limits how big a model fits on a device, and how many bytes each decode step must read).
Whether it is *faster* depends on having a kernel that reads int8/int4 directly. Each module
keeps a readable reference forward (dequantize the whole weight, then matmul: slower than fp32
on CPU, since it writes a full fp32 weight per call) and, after ``convert_for_runtime``, calls
torch's packed weight-only kernels (``torch._weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``)
with bf16 activations, which read 1 or 0.5 byte per weight (measured in lesson 4.2.2).

* ``quantize_int8(w)``: symmetric, one scale per output channel (row): ``scale = max|row| / 127``.
* ``quantize_int4(w, group_size)``: symmetric, values in [-8, 7], one scale per ``group_size``
  consecutive input weights of a row; two 4-bit values packed per byte (low nibble = even index).
* ``quantize_model(model, "gptq-int4", calibration=...)`` (``gptq_int4`` per layer): int4 with GPTQ's error compensation (Frantar et al., 2023): columns
  are quantized one at a time and the rounding error of each is spread over the columns not yet
  quantized, weighted by the inverse Hessian ``H = X^T X`` of the layer's inputs on a small
  calibration set, so the layer's *outputs* move as little as possible.
* ``dynamic_int8``: the study plan's ``torch.ao.quantization.quantize_dynamic`` (deprecated in
  current torch in favour of torchao's ``quantize_``; the warning is captured and returned).

Quantized models save/load as safetensors + config.json like the fp32 artefact.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .absmax import absmax_quantize, absmax_scale
from .config import ModelConfig
from .data import ByteTokenizer, eval_batches
from .export import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ExportError,
    check_tensors,
    read_config,
    read_safetensors,
    save_safetensors,
)
from .fsio import atomic_write_text
from .model import DIYModel
from .tokenizer import (
    file_description,
    load_artifact_tokenizer,
    save_artifact_tokenizer,
    tokenizer_from_description,
)
from .util import cdiv

QFORMAT = "course_lib.quantized/1"
METHODS = ("int8", "int4", "gptq-int4")


# --------------------------------------------------------------------------------------------
# Tensor-level quantizers
# --------------------------------------------------------------------------------------------
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: returns ``(q int8 (out, in), scale fp32 (out,))``.

    Max error per element is ``scale / 2`` (round to nearest), i.e. ``max|row| / 254``.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_int8 expects a 2-D weight (out, in), got shape {tuple(w.shape)}")
    q, scale = absmax_quantize(w, 127, dim=1)
    return q, scale.squeeze(1)


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale.float()[:, None]


def pack_int4(q: Tensor) -> Tensor:
    """int values in [-8, 7], shape (out, in) with even ``in`` -> uint8 (out, in/2)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 (out, in/2) -> int8 (out, in) in [-8, 7]."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def _check_group(w: Tensor, group_size: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"int4 quantization expects a 2-D weight (out, in), got shape {tuple(w.shape)}")
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size={group_size} must be a positive even number (typical: 32, 64, 128)")


def padded_width(in_features: int, group_size: int) -> int:
    """Rows are zero-padded to a multiple of ``group_size`` (e.g. 352 -> 384 for groups of 64);
    the padding quantizes to exact zeros and is cropped when dequantizing."""
    return cdiv(in_features, group_size) * group_size


def quantize_int4(w: Tensor, group_size: int = 64) -> tuple[Tensor, Tensor]:
    """Group-wise symmetric int4 (round to nearest): ``(packed uint8 (out, in/2), scales (out, in/group))``."""
    _check_group(w, group_size)
    w = F.pad(w.detach().float(), (0, padded_width(w.shape[1], group_size) - w.shape[1]))
    q, scales = absmax_quantize(w.reshape(w.shape[0], -1, group_size), 7, dim=-1, qmin=-8)
    return pack_int4(q.reshape_as(w)), scales.squeeze(-1)


def dequantize_int4(packed: Tensor, scales: Tensor, group_size: int, in_features: int | None = None) -> Tensor:
    q = unpack_int4(packed).float()
    out = (q.reshape(q.shape[0], -1, group_size) * scales.float()[..., None]).reshape(q.shape)
    return out if in_features is None else out[:, :in_features]


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
# Runtime kernels (gpt-fast's split: create the quantized state dict once, then convert the
# modules for runtime). The stored tensors above are the teaching format and the file format;
# ``convert_for_runtime`` adds, once, what the packed low-bit kernels read:
#   int8: torch._weight_int8pack_mm(x_bf16, q int8 (out, in), scale bf16 (out,))
#   int4: aten._convert_weight_to_int4pack_for_cpu(q + 8 as int32 (out, in), inner_k_tiles=2) once,
#         then aten._weight_int4pack_mm_for_cpu(x_bf16, packed, group, scales_and_zeros (in/g, out, 2)),
#         which computes w = (q_u4 - 8) * scale + zero; our int4 is symmetric, so zero = 0.
# Measured on CPU (1 thread, a 2048 x 2048 layer, one token): fp32 F.linear 1.7 ms, int8 kernel
# 0.4 ms, int4 kernel 0.23 ms with bf16 activations; with fp32 activations the same kernels take
# 3.8 ms and 10.5 ms, so the fast path casts activations to bf16 and the result back.
KERNEL_DTYPE = torch.bfloat16
_INT4_N_MULTIPLE = 16  # the CPU int4 packer wants the output dimension divisible by 16


def int8_kernel_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def int4_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


class Int8Linear(nn.Module):
    """``y = (x @ q^T) * scale``: the per-row scale factors out of the matmul.

    ``forward_reference`` is the readable version (cast the int8 weight, matmul, scale);
    after ``convert_for_runtime()`` the forward calls the int8 weight-only kernel instead.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.kernel = False

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        m = cls(lin.in_features, lin.out_features)
        m.qweight, m.scale = quantize_int8(lin.weight)
        return m

    def dequantized(self) -> Tensor:
        return dequantize_int8(self.qweight, self.scale)

    def dequantized_rows(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` of the dequantized weight (an embedding lookup without the whole table)."""
        return self.qweight[ids].float() * self.scale[ids].float()[..., None]

    def convert_for_runtime(self, kernel: bool = True) -> None:
        """Cast the scales for the kernel once (not stored: derived from ``scale``)."""
        self.kernel = kernel and int8_kernel_available()
        if self.kernel:
            self.register_buffer("scale_rt", self.scale.to(KERNEL_DTYPE), persistent=False)

    def forward_reference(self, x: Tensor) -> Tensor:
        return F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.kernel and x.device.type in ("cpu", "cuda")):
            return self.forward_reference(x)
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).to(KERNEL_DTYPE), self.qweight, self.scale_rt)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel, kernel={self.kernel}"


class Int4Linear(nn.Module):
    """Packed int4 weight, one scale per group.

    ``forward_reference`` unpacks and dequantizes the whole weight on every call (readable, and
    slow: it reads and writes the full fp32 weight each time); after ``convert_for_runtime()``
    the forward calls the CPU int4 kernel on a copy packed once in its tile layout.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 64) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        width = padded_width(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(out_features, width // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, width // group_size))
        self.kernel = False

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int = 64) -> Int4Linear:
        m = cls(lin.in_features, lin.out_features, group_size)
        m.qweight, m.scales = quantize_int4(lin.weight, group_size)
        return m

    def dequantized(self) -> Tensor:
        return dequantize_int4(self.qweight, self.scales, self.group_size, self.in_features)

    def dequantized_rows(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` of the dequantized weight, unpacking only those rows."""
        flat = ids.reshape(-1)
        rows = dequantize_int4(self.qweight[flat], self.scales[flat], self.group_size, self.in_features)
        return rows.reshape(*ids.shape, self.in_features)

    def convert_for_runtime(self, kernel: bool = True) -> None:
        """Pack once into the kernel's layout (rows padded to a multiple of 16 with zero weights)."""
        self.kernel = kernel and int4_kernel_available() and self.qweight.device.type == "cpu"
        if not self.kernel:
            return
        n_pad = cdiv(self.out_features, _INT4_N_MULTIPLE) * _INT4_N_MULTIPLE - self.out_features
        q_u4 = unpack_int4(self.qweight).to(torch.int32) + 8
        q_u4 = F.pad(q_u4, (0, 0, 0, n_pad), value=8)  # 8 is the zero of the unsigned nibble
        scales = F.pad(self.scales.float(), (0, 0, 0, n_pad))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q_u4.contiguous(), 2)
        sz = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1).contiguous().to(KERNEL_DTYPE)
        self.register_buffer("packed_rt", packed, persistent=False)
        self.register_buffer("scales_zeros_rt", sz, persistent=False)

    def forward_reference(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized().to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if not (self.kernel and x.device.type == "cpu"):
            return self.forward_reference(x)
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)
        width = self.qweight.shape[1] * 2
        if width != self.in_features:  # rows were zero-padded to whole groups: pad x to match
            x2 = F.pad(x2, (0, width - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed_rt, self.group_size, self.scales_zeros_rt)
        return y[:, : self.out_features].reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 group={self.group_size}, kernel={self.kernel}"


class QuantEmbedding(nn.Module):
    """An embedding table stored like a quantized linear weight (one row per token).

    The lookup dequantizes only the rows it needs (never the whole table); the tied
    ``lm_head`` reads the same table through ``TiedQuantHead`` (the kernel once converted),
    so the tensor is stored once and no step dequantizes all of it.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner  # an Int8Linear / Int4Linear whose "out" axis is the vocabulary

    def forward(self, ids: Tensor) -> Tensor:
        return self.inner.dequantized_rows(ids)


class TiedQuantHead(nn.Module):
    def __init__(self, emb: QuantEmbedding) -> None:
        super().__init__()
        self._emb = [emb]  # a list hides it from state_dict(): the table belongs to the embedding

    def forward(self, x: Tensor) -> Tensor:
        return self._emb[0].inner(x)


def convert_for_runtime(qmodel, kernel: bool = True):
    """Prepare every quantized layer of ``qmodel`` for its kernel (or back to the reference
    path with ``kernel=False``). Run again after loading new quantized tensors into it, and
    after moving it to another device. Returns ``qmodel``."""
    for m in qmodel.modules():
        if isinstance(m, (Int8Linear, Int4Linear)):
            m.convert_for_runtime(kernel)
    return qmodel


def effective_group(group_size: int, in_features: int) -> int:
    """``group_size``, or the whole row when the row is shorter (tiny quick-mode models)."""
    return min(group_size, in_features)


def _make(method: str, lin: nn.Linear, group_size: int) -> nn.Module:
    group_size = effective_group(group_size, lin.in_features)
    if method == "int8":
        return Int8Linear.from_linear(lin)
    if method in ("int4", "gptq-int4"):
        return Int4Linear.from_linear(lin, group_size)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def linear_names(model) -> list[str]:
    """The transformer blocks' ``nn.Linear`` layers (not ``lm_head``, handled with the embedding)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("lm_head")]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(
    model,
    method: str = "int8",
    group_size: int = 64,
    embeddings: bool = True,
    calibration: Tensor | None = None,
    damp: float = 0.01,
    kernel: bool = True,
):
    """A quantized copy of ``model`` (the original is untouched).

    ``method``: ``int8`` | ``int4`` (round to nearest) | ``gptq-int4`` (needs ``calibration``,
    a (N, T) tensor of token ids). ``embeddings=True`` also quantizes the (tied) embedding table
    with round-to-nearest, per vocabulary row. ``kernel=True`` converts the copy for the packed
    low-bit kernels (``convert_for_runtime``); ``False`` keeps the readable reference forward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "gptq-int4" and calibration is None:
        raise ValueError("gptq-int4 needs calibration token ids (N, T): a few held-in sequences")
    qm = copy.deepcopy(model).eval()
    names = linear_names(qm)
    if method == "gptq-int4":
        hessians = collect_hessians(qm, calibration, names)
        for n in names:
            lin = qm.get_submodule(n)
            g = effective_group(group_size, lin.in_features)
            packed, scales = gptq_int4(lin.weight.detach(), hessians[n], g, damp)
            new = Int4Linear(lin.in_features, lin.out_features, g)
            new.qweight, new.scales = packed, scales
            _set_module(qm, n, new)
    else:
        for n in names:
            _set_module(qm, n, _make(method, qm.get_submodule(n), group_size))
    if embeddings:
        emb_w = qm.embed_tokens.weight.detach()
        tied = qm.lm_head.weight is qm.embed_tokens.weight
        fake = nn.Linear(emb_w.shape[1], emb_w.shape[0], bias=False)
        fake.weight = nn.Parameter(emb_w.clone())
        qm.embed_tokens = QuantEmbedding(_make("int8" if method == "int8" else "int4", fake, group_size))
        if tied:
            qm.lm_head = TiedQuantHead(qm.embed_tokens)
        else:
            qm.lm_head = _make("int8" if method == "int8" else "int4", qm.lm_head, group_size)
    qm.quant_spec = {"method": method, "group_size": group_size, "embeddings": embeddings}
    return convert_for_runtime(qm, kernel)


# --------------------------------------------------------------------------------------------
# GPTQ
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_hessians(model, calibration: Tensor, names: Sequence[str], batch_size: int = 8) -> dict[str, Tensor]:
    """``H = 2/N * sum x x^T`` of each named linear's inputs over the calibration tokens.

    One pass of the full-precision model (GPTQ proper re-runs each block on the outputs of the
    already quantized blocks; this one-shot variant keeps the code short and, for a 4-layer
    model, loses little).
    """
    H: dict[str, Tensor] = {}
    count: dict[str, int] = {}
    hooks = []
    for n in names:
        lin = model.get_submodule(n)
        H[n] = torch.zeros(lin.in_features, lin.in_features, dtype=torch.float64)
        count[n] = 0

        def hook(mod, inp, out, n=n):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double().cpu()
            H[n] += 2.0 * x.T @ x
            count[n] += x.shape[0]

        hooks.append(lin.register_forward_hook(hook))
    try:
        for i in range(0, calibration.shape[0], batch_size):
            model(calibration[i : i + batch_size].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {n: (H[n] / max(count[n], 1)).float() for n in names}


@torch.no_grad()
def gptq_int4(w: Tensor, H: Tensor, group_size: int = 64, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Quantize ``w`` (out, in) column by column, compensating each column's rounding error.

    For column i: q_i = round(w_i / s); err = (w_i - q_i s) / Hinv[i, i];
    w[:, i+1:] -= err * Hinv[i, i+1:]  (the OBS update), with ``Hinv`` the upper Cholesky
    factor of H^-1 as in the reference implementation. A group's scale is fixed when its
    first column is reached, from the weights *as updated so far*.
    """
    _check_group(w, group_size)
    pad = padded_width(w.shape[1], group_size) - w.shape[1]
    W = F.pad(w.detach().float(), (0, pad))
    H = F.pad(H.detach().float().to(W.device), (0, pad, 0, pad))  # padded columns are "dead": zeroed below
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    Q = torch.zeros_like(W)
    scales = torch.zeros(W.shape[0], cols // group_size, device=W.device)  # on W's device (CUDA too)
    for i in range(cols):
        if i % group_size == 0:
            scales[:, i // group_size] = absmax_scale(W[:, i : i + group_size], 7, dim=1, keepdim=False)
        s = scales[:, i // group_size]
        q = torch.round(W[:, i] / s).clamp_(-8, 7)
        Q[:, i] = q
        err = (W[:, i] - q * s) / Hinv[i, i]
        W[:, i + 1 :] -= err[:, None] * Hinv[i, i + 1 :][None, :]
    return pack_int4(Q), scales


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------
def save_quantized(qmodel, out_dir: str | os.PathLike, tokenizer=None) -> dict:
    """``model.safetensors`` (int8 / packed uint8 tensors + fp32 scales) + ``config.json``,
    each written atomically."""
    spec = getattr(qmodel, "quant_spec", None)
    if spec is None:
        raise ValueError("save_quantized: this model was not made by quantize_model()")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in qmodel.state_dict().items()}
    save_safetensors(tensors, out / WEIGHTS_FILE, metadata={"format": "pt", "course_lib": QFORMAT})
    meta = {
        "format": QFORMAT,
        "model": qmodel.config.to_dict(),
        "quantization": spec,
        "tokenizer": file_description((tokenizer or ByteTokenizer()).describe()),
        "weights": WEIGHTS_FILE,
    }
    save_artifact_tokenizer(tokenizer, out)  # a BPE goes with the weights as tokenizer.json (like save_inference)
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return {"dir": out, "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}


def load_quantized(path: str | os.PathLike, device="cpu"):
    """Rebuild the quantized structure from ``config.json``, fill it from safetensors (checked)."""
    folder = Path(path)
    meta = read_config(folder)
    if meta.get("format") != QFORMAT:
        raise ExportError(
            f"{folder}: format {meta.get('format')!r} is not {QFORMAT}; "
            "for a full-precision artefact use export.load_inference()"
        )
    spec = meta["quantization"]
    shell = DIYModel(ModelConfig.from_dict(meta["model"]))
    qm = quantize_model(
        shell,
        spec["method"] if spec["method"] != "gptq-int4" else "int4",
        spec["group_size"],
        spec["embeddings"],
        kernel=False,
    )
    qm.quant_spec = spec
    tensors = read_safetensors(folder / meta.get("weights", "model.safetensors"))
    expected = {k: (tuple(v.shape), v.dtype) for k, v in qm.state_dict().items()}
    check_tensors(expected, tensors, str(folder), check_dtype=True)
    qm.load_state_dict(tensors, strict=True)
    qm = convert_for_runtime(qm.to(device).eval())  # pack the loaded tensors, once
    desc = meta.get("tokenizer", {"type": "byte"})
    # the artefact's own tokenizer: bytes, its tokenizer.json (hash checked), or a BPE whose JSON an
    # older artefact kept inside config.json
    tok = tokenizer_from_description(desc) if "json" in desc else load_artifact_tokenizer(folder, desc)
    return qm, tok, meta


# --------------------------------------------------------------------------------------------
# torch.ao dynamic quantization (the study plan's API)
# --------------------------------------------------------------------------------------------
TORCHAO_REPLACEMENT = """\
# torchao (pip install torchao): the maintained replacement for torch.ao.quantization
from torchao.quantization import quantize_, Int8DynamicActivationInt8WeightConfig
quantize_(model, Int8DynamicActivationInt8WeightConfig())   # in place, nn.Linear -> int8
# weight-only variants: Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=128)
"""


def dynamic_int8(model) -> tuple[nn.Module, list[str]]:
    """``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``.

    Weights int8 (per tensor), activations quantized on the fly per batch; uses fbgemm/qnnpack
    kernels (CPU only). Returns ``(quantized copy, warning messages)``. Raises ``RuntimeError``
    saying what to use instead if this torch no longer has the API.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # removed in a future torch
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic ({e}); "
            "use torchao: " + TORCHAO_REPLACEMENT
        ) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = quantize_dynamic(copy.deepcopy(model).eval().cpu(), {nn.Linear}, dtype=torch.qint8)
    msgs = list(dict.fromkeys(without_build_location(str(w.message)) for w in caught))
    return qm, msgs


# torch's C++ warnings end with the source location on the machine that built the wheel, e.g.
# " (Triggered internally at /__w/pytorch/pytorch/aten/src/ATen/quantized/Quantizer.cpp:111.)".
# The message itself is what a reader needs (4.2.2 prints it); the build path is noise.
_BUILD_LOCATION = re.compile(r"\s*\(Triggered internally at [^()]*\)\s*$")


def without_build_location(message: str) -> str:
    """A warning's text without torch's trailing "(Triggered internally at <build path>)"."""
    return _BUILD_LOCATION.sub("", message.strip()).strip()


# --------------------------------------------------------------------------------------------
# Size and quality
# --------------------------------------------------------------------------------------------
def model_nbytes(model) -> int:
    """Bytes of the tensors the model holds (parameters + buffers, shared ones once; packed
    quantized weights of ``quantize_dynamic`` included). The RoPE tables are not counted:
    they are derived from the config, not weights."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, Tensor):
            key = (t.data_ptr(), t.numel()) if not t.is_quantized else id(t)
            if key in seen:
                return
            seen.add(key)
            total += t.numel() * t.element_size()
        elif isinstance(t, (tuple, list)):
            for x in t:
                add(x)

    for t in model.state_dict(keep_vars=False).values():
        add(t)
    return total


@torch.no_grad()
def perplexity(
    model, tokens: Tensor, seq_len: int = 128, batch_size: int = 16, max_batches: int | None = None
) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows of ``tokens`` (1-D)."""
    model.eval()
    device = next(iter(model.state_dict().values())).device
    total, n = 0.0, 0
    for x, y in eval_batches(tokens, seq_len, batch_size, max_batches or 10**9):
        logits = model(x.to(device)).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="sum").item()
        n += y.numel()
    return math.exp(total / n)


@torch.no_grad()
def logits_divergence(ref_logits: Tensor, logits: Tensor) -> dict:
    """KL(ref || other) per token (nats) and top-1 agreement of two logits tensors (..., vocab),
    averaged over all positions; ``tokens`` is the number of positions."""
    lp = F.log_softmax(ref_logits.float(), -1)
    lq = F.log_softmax(logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    agree = lp.argmax(-1) == lq.argmax(-1)
    return {"kl": kl.mean().item(), "top1_agreement": agree.float().mean().item(), "tokens": kl.numel()}


@torch.no_grad()
def compare_to_reference(
    ref, model, tokens: Tensor, seq_len: int = 128, batch_size: int = 16, max_batches: int | None = None
) -> dict:
    """KL(ref || model) per token (nats) and top-1 agreement of next-token predictions."""
    ref.eval(), model.eval()
    kl, agree, n = 0.0, 0.0, 0
    for x, _ in eval_batches(tokens, seq_len, batch_size, max_batches or 10**9):
        d = logits_divergence(ref(x).logits, model(x).logits)
        kl += d["kl"] * d["tokens"]
        agree += d["top1_agreement"] * d["tokens"]
        n += d["tokens"]
    return {"kl": kl / n, "top1_agreement": agree / n}
