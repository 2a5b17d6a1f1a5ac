"""cache="fused" (course_lib/fused_decode.py): the decode step with stacked q/k/v and gate/up
weights gives the model's own tokens and logits; what it cannot decode is refused in one line."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.fused_decode import FusedDecodeCache
from course_lib.generate import generate, make_cache, prefill
from course_lib.model import DIYModel
from course_lib.pretrained import load_reference_model

CONFIGS = {
    "gqa": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160, max_seq_len=96),
    "mha": ModelConfig(d_model=48, n_layers=3, n_heads=3, n_kv_heads=3, ffn_hidden=128, max_seq_len=96),
}


def _model(name: str) -> DIYModel:
    torch.manual_seed(0)
    return DIYModel(CONFIGS[name]).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_the_model_step_by_step(name):
    model = _model(name)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    ref, fused = make_cache("static", model, 2, 40), make_cache("fused", model, 2, 40)
    with torch.no_grad():
        a, b = prefill(model, ids, None, ref), prefill(model, ids, None, fused)
        for _ in range(20):
            nxt = a.argmax(-1)
            a = model(nxt[:, None], past_key_values=ref, use_cache=True).logits[:, -1]
            b = fused.decode(model, nxt)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert fused.get_seq_length() == ref.get_seq_length() == 29


def test_reference_model_generates_the_same_tokens():
    model, tok = load_reference_model()
    ids = torch.tensor([tok.encode("def parse(line):\n    ")])
    want = generate(model, ids, 48)
    assert torch.equal(generate(model, ids, 48, cache="fused"), want)
    # sampling with the same generator, and EOS with the batch shrinking
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kw = dict(temperature=0.8, top_k=20)
    assert torch.equal(
        generate(model, ids, 32, generator=g1, **kw), generate(model, ids, 32, generator=g2, cache="fused", **kw)
    )
    two = ids.repeat(2, 1)
    eos = int(want[0, 5])
    assert torch.equal(generate(model, two, 24, eos_id=eos, cache="fused"), generate(model, two, 24, eos_id=eos))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_models_decode_the_same_tokens(method):
    """int8 / int4 weight-only layers are stacked row-wise with their scales: the same kernel over
    the concatenated rows gives the separate projections' outputs, so the tokens are the same."""
    from course_lib.quantize import Int4Linear, Int8Linear, quantize_model

    model, tok = load_reference_model()
    q = quantize_model(model, method, 64)
    ids = torch.tensor([tok.encode("class Parser:\n    def ")])
    cache = make_cache("fused", q, 1, 80)
    assert all(type(w) is (Int8Linear if method == "int8" else Int4Linear) for w in cache.w_qkv + cache.w_gate_up)
    assert cache.w_qkv[0].kernel == q.layers[0].self_attn.q_proj.kernel
    assert torch.equal(generate(q, ids, 40, cache="fused"), generate(q, ids, 40, cache="static"))
    # the kernel switch is part of the stack's key: the reference path is stacked again
    from course_lib.quantize import convert_for_runtime

    convert_for_runtime(q, kernel=False)
    assert make_cache("fused", q, 1, 80).w_qkv[0].kernel is False


def test_padded_prompts_and_unstackable_models_are_refused():
    model = _model("gqa")
    ids = torch.randint(0, 256, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="unpadded prompts only"):
        generate(model, ids, 4, attention_mask=mask, cache="fused")
    from course_lib.quantize import dynamic_int8

    q = dynamic_int8(_model("gqa"))[0]
    with pytest.raises(ValueError, match="use cache='static'"):
        FusedDecodeCache.for_model(q, 1, 32)
