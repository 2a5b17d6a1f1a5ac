"""The compiled fast path: static cache with tensor positions + torch.compile of the decode step.

Kept small (a 1-layer model, a few tokens): compiling costs seconds on a 2-core CPU.
"""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.generate import _decode_logits, compile_available, generate, make_compiled_cache, prefill
from course_lib.kv_cache import DynamicCache
from course_lib.model import DIYModel


def tiny(seed=0):
    torch.manual_seed(seed)
    return DIYModel(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=32)).eval()


def test_tensor_position_cache_matches_dynamic_cache_eagerly():
    m = tiny()
    ids = torch.randint(0, 258, (2, 9))
    with torch.no_grad():
        ref = m(ids).logits
        cache = make_compiled_cache(m, 2, 16)
        first = prefill(m, ids[:, :5], None, cache)
        cache.advance(5)
        steps = [first]
        for t in range(5, 9):
            steps.append(_decode_logits(m, ids[:, t], cache))
            cache.advance(1)
    torch.testing.assert_close(torch.stack(steps[:-1], 1), ref[:, 4:8], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_len"):
        cache.advance(100)
    with pytest.raises(ValueError, match="attention_mask"):
        m(ids[:, :1], attention_mask=torch.ones(2, 10, dtype=torch.long), past_key_values=cache, use_cache=True)


def test_decode_step_has_no_graph_breaks():
    m = tiny()
    cache = make_compiled_cache(m, 1, 16)
    with torch.no_grad():
        prefill(m, torch.randint(0, 258, (1, 4)), None, cache)
        cache.advance(4)
        torch._dynamo.reset()
        info = torch._dynamo.explain(_decode_logits)(m, torch.tensor([7]), cache)
    assert info.graph_break_count == 0, info.break_reasons
    assert info.graph_count == 1


@pytest.mark.skipif(not compile_available()[0], reason=compile_available()[1])
def test_generate_compiled_equals_eager():
    m = tiny()
    ids = torch.randint(0, 258, (2, 6))
    eager = generate(m, ids, 5)
    compiled = generate(m, ids, 5, compile=True)
    assert torch.equal(eager, compiled)
    # one graph serves every step and every length in the same cache bucket: no recompiles
    # (a strided input or a Python int that changes per step would recompile each step)
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    assert torch.equal(generate(m, ids[:, :4], 9, compile=True), generate(m, ids[:, :4], 9))
    assert torch.equal(generate(m, ids[:1], 6, compile=True), generate(m, ids[:1], 6))
    assert counters["stats"]["unique_graphs"] - before <= 1  # batch 1 is a new shape: at most one graph
    with pytest.raises(ValueError, match="unpadded"):
        generate(m, ids, 2, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]), compile=True)
    assert DynamicCache  # eager default unchanged
