"""HF parity: our model exported to the Llama layout loads in transformers with equal logits."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.export import export_hf_llama
from course_lib.model import DIYModel

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")


@pytest.mark.parametrize("kv_heads,tie", [(2, True), (4, False), (1, True)])
def test_hf_llama_logits_match(tmp_path, kv_heads, tie):
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=kv_heads, ffn_hidden=160, max_seq_len=128, tie_embeddings=tie
    )
    m = DIYModel(cfg).eval()
    export_hf_llama(m, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 258, (2, 100))
    with torch.no_grad():
        ours, theirs = m(ids).logits, hf(ids).logits
    # fp32 on both sides; only the RoPE tables (fp64 vs fp32 frequencies) and summation order differ.
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_hf_llama_matches_reference_model(tmp_path):
    from course_lib.pretrained import load_reference_model

    m, tok = load_reference_model()
    export_hf_llama(m, tmp_path, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("def fibonacci(n):\n    return ")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, m(ids).logits, atol=1e-4, rtol=0)
        # and HF's own greedy generation agrees with ours
        want = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_id)[:, ids.shape[1] :]
    from course_lib.generate import generate

    assert generate(m, ids, 12).tolist() == want.tolist()
