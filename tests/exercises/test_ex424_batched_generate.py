"""Grader for exercises/ex424_batched_generate.py. Oracle: each prompt generated alone with
course_lib's DIYModel, no padding and no cache (the whole sequence recomputed each step).
Greedy tokens must be identical: the model is fp32 with sharp logits (init_std 0.3), so the
~1e-6 difference between the batched and single computations cannot flip an argmax here."""

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.model import DIYModel

EX = "ex424_batched_generate"
PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46], [9], [100, 3, 100, 3, 77]]


def model():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64, init_std=0.3)
    return DIYModel(cfg).eval()


@torch.no_grad()
def alone(m, prompt, n, eos_id=None):
    ids = torch.tensor([prompt])
    out = []
    for _ in range(n):
        tok = int(m(ids).logits[0, -1].argmax())
        out.append(tok)
        if tok == eos_id:
            break
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


@pytest.mark.parametrize("pad_id", [0, 257])
def test_equals_each_prompt_alone(impl, pad_id):
    m = model()
    got = impl(EX).batched_greedy(m, PROMPTS, 8, pad_id=pad_id)
    assert isinstance(got, list) and len(got) == len(PROMPTS), f"应返回 {len(PROMPTS)} 个列表，实际 {got!r}"
    for i, p in enumerate(PROMPTS):
        want = alone(m, p, 8)
        assert list(map(int, got[i])) == want, (
            f"提示 {i}（长度 {len(p)}，pad_id={pad_id}）：单独生成得到 {want}，批量生成得到 {list(got[i])}。"
            "检查左填充 (left padding)、attention_mask 和 position_ids"
        )


def test_rows_stop_at_eos(impl):
    m = model()
    free = [alone(m, p, 8) for p in PROMPTS]
    # an EOS that ends some row in the middle (not at its first token) and leaves another running
    eos = next(
        t
        for row in free
        for k, t in enumerate(row)
        if k >= 2 and t not in row[:k] and any(t not in other for other in free)
    )
    got = impl(EX).batched_greedy(m, PROMPTS, 8, pad_id=0, eos_id=eos)
    for i, p in enumerate(PROMPTS):
        want = alone(m, p, 8, eos_id=eos)
        assert list(map(int, got[i])) == want, (
            f"eos_id={eos}，提示 {i}：期望 {want}（遇到 eos 就停，其他行继续），实际 {list(got[i])}"
        )


def test_all_rows_finished_stops_early(impl):
    m = model()
    first = [alone(m, p, 1)[0] for p in PROMPTS[:1]]
    got = impl(EX).batched_greedy(m, PROMPTS[:1], 50, pad_id=0, eos_id=first[0])
    assert list(map(int, got[0])) == first, f"第一个 token 就是 eos 时应只返回 {first}，实际 {list(got[0])}"


def test_empty_prompt_is_rejected(impl):
    with pytest.raises(ValueError):
        impl(EX).batched_greedy(model(), [[1, 2], []], 3, pad_id=0)
