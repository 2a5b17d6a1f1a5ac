"""Speculative decoding: greedy output is the model's own, sampling keeps the model's distribution."""

from __future__ import annotations

import pytest
import torch

from course_lib.config import ModelConfig
from course_lib.engine import Engine
from course_lib.generate import generate, sample_next
from course_lib.model import DIYModel
from course_lib.pretrained import load_reference_model
from course_lib.speculative import (
    DraftModelProposer,
    NgramProposer,
    SpecConfig,
    speculative_generate,
    target_probs,
    verify_sampled,
)


@pytest.fixture(scope="module")
def ref():
    # One thread: on a shared 2-core machine two threads per process run these tiny forwards ~8x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = load_reference_model()
    yield model.eval(), tok
    torch.set_num_threads(n)


PROMPTS = [
    "def __init__(self, name):\n    self.name = name\n    self.",
    "import os\nimport sys\nimport ",
    "for i in range(10):\n    print(i)\nfor j in range(",
    "class A:\n    pass\n\n\nclass B",
]


N_NEW = 40


@pytest.fixture(scope="module")
def plain(ref):
    """The model's own greedy continuation of each prompt (the oracle, computed once)."""
    model, tok = ref
    return {text: generate(model, torch.tensor([tok.encode(text)]), N_NEW).tolist() for text in PROMPTS}


@pytest.mark.parametrize("k", [1, 4])
def test_ngram_greedy_equals_plain_greedy(ref, plain, k):
    """Through generate(..., speculative=SpecConfig(...)), which delegates to speculative_generate."""
    model, tok = ref
    total_steps = total_emitted = 0
    for text in PROMPTS:
        ids = torch.tensor([tok.encode(text)])
        cfg = SpecConfig(NgramProposer(), k=k)
        spec, stats = generate(model, ids, N_NEW, speculative=cfg), cfg.stats
        assert spec.tolist() == plain[text], f"speculative greedy differs from plain greedy for {text!r} (k={k})"
        total_steps += stats.verify_steps
        total_emitted += stats.emitted
    assert total_emitted == N_NEW * len(PROMPTS)
    assert total_steps < total_emitted, "prompt lookup on repetitive code should accept some proposals"


def tiny_draft(model):
    torch.manual_seed(0)
    return DIYModel(
        ModelConfig(
            vocab_size=model.config.vocab_size,
            d_model=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            ffn_hidden=64,
            max_seq_len=model.config.max_seq_len,
        )
    ).eval()


def test_draft_model_greedy_equals_plain_greedy_with_eos(ref):
    model, tok = ref
    draft = tiny_draft(model)
    eos = tok.encode("\n")[0]
    for text in PROMPTS[:2]:
        ids = torch.tensor([tok.encode(text)])
        plain = generate(model, ids, 40, eos_id=eos)
        spec, _ = speculative_generate(model, ids, 40, proposer=DraftModelProposer(draft), k=3, eos_id=eos)
        got = spec[0].tolist()
        want = plain[0].tolist()
        want = want[: want.index(eos) + 1] if eos in want else want
        assert got == want, f"draft-model speculative greedy differs for {text!r}"


def test_generate_speculative_streams_and_stops_at_eos_like_generate(ref):
    model, tok = ref
    eos = tok.encode("\n")[0]
    ids = torch.tensor([tok.encode(PROMPTS[1])])  # continues "os\nimport ...": EOS (newline) early
    seen = []
    got = generate(model, ids, 40, eos_id=eos, speculative=SpecConfig(), on_token=lambda t: seen.append(int(t[0])))
    want = generate(model, ids, 40, eos_id=eos)
    assert got.tolist() == want.tolist() and seen == want[0].tolist() and seen[-1] == eos


def test_self_draft_accepts_every_proposal(ref):
    """The model as its own draft: every greedy proposal is right, k + 1 tokens per verify step."""
    model, tok = ref
    ids = torch.tensor([tok.encode(PROMPTS[0])])
    _, stats = speculative_generate(model, ids, 25, proposer=DraftModelProposer(model), k=4)
    assert stats.acceptance_rate == 1.0
    assert stats.per_step[:5] == [5, 5, 5, 5, 5]


def test_target_probs_matches_sample_next():
    """target_probs is the distribution sample_next draws from (same temperature / top-k / top-p)."""
    torch.manual_seed(1)
    logits = torch.randn(1, 12) * 2
    for kw in ({"temperature": 0.7}, {"temperature": 1.0, "top_k": 4}, {"temperature": 1.3, "top_p": 0.8}):
        p = target_probs(logits, kw["temperature"], kw.get("top_k"), kw.get("top_p"))[0]
        g = torch.Generator().manual_seed(0)
        draws = torch.stack(
            [sample_next(logits, kw["temperature"], kw.get("top_k"), kw.get("top_p"), g) for _ in range(4000)]
        ).flatten()
        freq = torch.bincount(draws, minlength=12).float() / draws.numel()
        assert (p == 0).eq(freq == 0).all(), f"support differs for {kw}"
        assert 0.5 * (freq - p).abs().sum() < 0.04, f"sample_next frequencies far from target_probs for {kw}"


@pytest.mark.parametrize("deterministic", [True, False])
def test_sampled_verify_keeps_the_model_distribution(deterministic):
    """Total-variation distance between the first emitted token's frequencies and p < 0.035 over
    10 000 draws. Sampling noise alone: E[TV] ~ 0.5 * sum sqrt(2 p (1 - p) / (pi N)) ~ 0.011 for these 8
    tokens, so 0.035 is about 3x the noise; a verify that skips the residual (on a rejection, draw from
    p instead of p without the proposal) lands at TV ~ 0.16 (test_the_bound_rejects_a_verify_without_the_residual)."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02])
    q = torch.tensor([0.05, 0.40, 0.05, 0.30, 0.05, 0.05, 0.05, 0.05])
    N = 10_000
    counts = torch.zeros(8)
    for _ in range(N):
        if deterministic:
            proposal, qq = [1], None  # prompt lookup always proposes token 1
        else:
            proposal, qq = [int(torch.multinomial(q, 1, generator=g))], q[None]
        out = verify_sampled(torch.stack([p, p]), proposal, qq, g)
        counts[out[0]] += 1
    tv = 0.5 * (counts / N - p).abs().sum()
    assert tv < 0.035, f"first-token distribution drifted from p: TV = {tv:.4f}"


def test_the_bound_rejects_a_verify_without_the_residual():
    """The distribution test has the power to fail: the wrong rule (accept x with probability p(x),
    else draw from the full p) emits the proposed token 1 with probability 0.2 + 0.8 * 0.2 = 0.36."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02])
    N, counts = 10_000, torch.zeros(8)
    for _ in range(N):
        u = float(torch.rand((), generator=g))
        counts[1 if u < p[1] else int(torch.multinomial(p, 1, generator=g))] += 1
    assert 0.5 * (counts / N - p).abs().sum() > 0.035


ENGINE_PROMPTS = PROMPTS + ["x = ", "def f(a, b):\n    return a + b\n\n\ndef g(a, b):\n    return "]


def test_engine_seeded_sampling_with_speculation_draws_what_it_draws_without(ref):
    """The engine verifies by sampling each position with the request's own sampler and generator, so
    every emitted token is one draw from the model's distribution, in the same order as plain decoding:
    seeded requests give the same tokens with and without speculation (top-p and penalties included)."""
    model, tok = ref
    outs = []
    for spec in (None, SpecConfig(NgramProposer(), k=4)):
        eng = Engine(model, max_batch=4, block_size=8, speculative=spec)
        kw = dict(temperature=0.8, top_p=0.95, frequency_penalty=0.3)
        reqs = [eng.submit(tok.encode(p), 30, seed=i, **kw) for i, p in enumerate(ENGINE_PROMPTS)]
        eng.run_until_done()
        outs.append([r.output for r in reqs])
        if spec is not None:
            assert eng.spec_stats()["accepted"] > 0
    assert outs[0] == outs[1]


def test_engine_with_draft_models_equals_greedy_alone(ref):
    """A draft model per request (its own cache, cropped after each verify step), batched verify: a
    random tiny draft (few proposals kept) and the model itself (every proposal kept)."""
    model, tok = ref
    eos = tok.encode("\n")[0]
    want = [generate(model, torch.tensor([tok.encode(p)]), 24, eos_id=eos)[0].tolist() for p in ENGINE_PROMPTS]
    for draft, rate in ((tiny_draft(model), None), (model, 1.0)):
        eng = Engine(model, eos_id=eos, max_batch=3, block_size=4, speculative=SpecConfig(DraftModelProposer(draft), 3))
        reqs = [eng.submit(tok.encode(p), 24) for p in ENGINE_PROMPTS]
        eng.run_until_done()
        assert [r.output for r in reqs] == want
        assert eng.pool.used_blocks() == 0 and all(r.proposer is None for r in reqs)
        if rate is not None:
            assert eng.spec_stats()["acceptance_rate"] == rate


def test_bad_speculative_settings_are_one_line_errors(ref):
    model, _ = ref
    with pytest.raises(ValueError, match="SpecConfig.k"):
        SpecConfig(NgramProposer(), k=0)
    with pytest.raises(TypeError, match="SpecConfig.proposer"):
        SpecConfig("ngram")
    with pytest.raises(TypeError, match="speculative must be"):
        Engine(model, speculative=4)
    with pytest.raises(ValueError, match="unpadded"):
        generate(model, torch.zeros(2, 3, dtype=torch.long), 4, speculative=SpecConfig())


def test_bad_arguments_are_one_line_errors(ref):
    model, tok = ref
    with pytest.raises(ValueError, match="one prompt"):
        speculative_generate(model, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="k"):
        speculative_generate(model, torch.zeros(1, 3, dtype=torch.long), 4, k=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        speculative_generate(model, torch.zeros(1, 3, dtype=torch.long), 10_000)
