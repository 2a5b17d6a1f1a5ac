"""Quantized layers on torch's packed low-bit kernels equal the readable reference path.

The kernels take bf16 activations (8 significant bits): the comparison allows the error of
rounding x to bf16 (relative 2^-9 per element, a sum of K such terms grows like sqrt(K)), stated
as |fast - reference| <= 1e-2 * max|reference| per layer and 5e-2 nats of KL per token for a model.
"""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel
from course_lib.quantize import (
    Int4Linear,
    Int8Linear,
    QuantEmbedding,
    convert_for_runtime,
    int4_kernel_available,
    int8_kernel_available,
    logits_divergence,
    quantize_model,
)

needs_kernels = pytest.mark.skipif(
    not (int8_kernel_available() and int4_kernel_available()), reason="this torch has no packed int8/int4 CPU kernels"
)


def _layer(kind, n_in, n_out, group=32):
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    return Int8Linear.from_linear(lin) if kind == "int8" else Int4Linear.from_linear(lin, group)


@needs_kernels
@pytest.mark.parametrize(
    "kind,n_in,n_out", [("int8", 64, 96), ("int8", 96, 258), ("int4", 64, 96), ("int4", 96, 258), ("int4", 80, 40)]
)
def test_kernel_matches_reference(kind, n_in, n_out):
    """Odd shapes on purpose: 258 rows (the byte vocabulary) is not a multiple of 16 and 80 is
    not a multiple of the group (32): the runtime packing pads both and crops the output."""
    m = _layer(kind, n_in, n_out)
    x = torch.randn(3, 5, n_in)
    ref = m.forward_reference(x)
    m.convert_for_runtime()
    assert m.kernel
    fast = m(x)
    assert fast.shape == ref.shape and fast.dtype == x.dtype
    err = (fast - ref).abs().max().item()
    assert err <= 1e-2 * ref.abs().max().item(), f"{kind} kernel vs reference: max error {err:.3g}"
    m.convert_for_runtime(kernel=False)  # back to the reference path, exactly
    assert torch.equal(m(x), ref)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_embedding_gathers_rows_without_whole_table(kind, monkeypatch):
    m = _layer(kind, 64, 258)
    emb = QuantEmbedding(m)
    ids = torch.randint(0, 258, (2, 7))
    full = torch.nn.functional.embedding(ids, m.dequantized())
    monkeypatch.setattr(type(m), "dequantized", lambda self: pytest.fail("whole table dequantized"))
    assert torch.equal(emb(ids), full)


@needs_kernels
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_model_on_kernels_matches_reference_model(method, monkeypatch):
    torch.manual_seed(0)
    model = DIYModel(
        ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, max_seq_len=64)
    ).eval()
    ref = quantize_model(model, method, group_size=32, kernel=False)
    fast = quantize_model(model, method, group_size=32)
    assert all(m.kernel for m in fast.modules() if isinstance(m, (Int8Linear, Int4Linear)))
    ids = torch.randint(0, 258, (2, 24))
    with torch.no_grad():
        ref_logits = ref(ids).logits
    # no step dequantizes a whole weight: neither the embedding nor the tied head
    for cls in (Int8Linear, Int4Linear):
        monkeypatch.setattr(cls, "dequantized", lambda self: pytest.fail("whole weight dequantized"))
    with torch.no_grad():
        d = logits_divergence(ref_logits, fast(ids).logits)
    assert d["kl"] < 5e-2 and d["top1_agreement"] > 0.9, d
    monkeypatch.undo()
    # the stored tensors are the same: the runtime buffers are not part of the state dict
    assert ref.state_dict().keys() == fast.state_dict().keys()
    convert_for_runtime(fast, kernel=False)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, fast(ids).logits)
