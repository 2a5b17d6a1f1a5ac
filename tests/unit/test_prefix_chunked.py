"""Prefix caching, chunked prefill and speculative decoding: exact against generating each request
alone, no leaked blocks (lesson 4.2.6's "must show"; the trace builder is shared with test_speculative)."""

import random

import pytest
import torch

from course_lib.block_manager import BlockManager, SeqBlocks
from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.kv_cache import BlockPool
from course_lib.pretrained import load_reference_model
from course_lib.speculative import NgramProposer, SpecConfig

NL = ord("\n")
PREFIXES = [
    "def forward(self, x):\n    h = self.norm(x)\n    ",
    "import os\nimport sys\nfrom pathlib import Path\n",
    "class Model(nn.Module):\n    def __init__(self, cfg):\n        super().__init__()\n        self.",
]
SUFFIXES = ["", "x", "return ", "for i in range(", "# ", "if x is None:", "y = x +", "print(", "self.w", "q, k, v"]


@pytest.fixture(scope="module")
def model_tok():
    # One thread: on a shared 2-core machine two threads per process run these tiny forwards ~8x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_reference_model()
    torch.set_num_threads(n)


def random_trace(tok, n=50, seed=0):
    """(arrival step, prompt ids, max_tokens): shared prefixes, repeats, mixed lengths, some unshared."""
    rng = random.Random(seed)
    out, step = [], 0
    for i in range(n):
        if i % 5 == 4:
            text = rng.choice(SUFFIXES) + "z" * rng.randint(1, 9)  # no shared prefix
        else:
            text = rng.choice(PREFIXES) + rng.choice(SUFFIXES)
        out.append((step, tok.encode(text), rng.randint(1, 28)))
        step += rng.choice([0, 0, 1, 2])
    return out


@pytest.fixture(scope="module")
def trace_and_oracle(model_tok):
    model, tok = model_tok
    trace = random_trace(tok)
    want = [generate(model, torch.tensor([ids]), m, eos_id=NL, pad_id=256)[0].tolist() for _, ids, m in trace]
    return trace, want


def replay(eng, trace, watch=None):
    reqs, i, step = [], 0, 0
    while i < len(trace) or eng.has_work:
        while i < len(trace) and trace[i][0] <= step:
            reqs.append(eng.submit(trace[i][1], trace[i][2]))
            i += 1
        eng.step()
        if watch:
            watch(eng)
        step += 1
        assert step < 5000, "engine stuck"
    return reqs


def live_tables(eng):
    return [r.blocks.table for r in eng.running if r.blocks is not None]


def check_blocks(eng):
    """Counts == live tables, and a decoding row holds exactly the blocks its length needs (the blocks
    of rejected speculative proposals went back to the pool)."""
    eng.block_manager.check(live_tables(eng))
    for r in eng.running:
        if r.blocks is not None and not eng.scheduler.is_prefilling(r):
            assert len(r.blocks.table) == eng.blocks_for(r.blocks.length), f"request {r.id} holds extra blocks"


@pytest.mark.parametrize(
    "prefix_cache,prefill_chunk,speculative",
    [
        (False, None, False),
        (True, None, False),
        (False, 8, False),
        (True, 8, False),
        (False, None, True),
        (True, 8, True),
    ],
)
def test_random_trace_equals_generating_each_alone(
    model_tok, trace_and_oracle, prefix_cache, prefill_chunk, speculative
):
    model, tok = model_tok
    trace, want = trace_and_oracle
    eng = Engine(
        model,
        eos_id=NL,
        max_batch=8,
        num_blocks=48,
        block_size=4,
        max_step_tokens=64,
        prefix_cache=prefix_cache,
        prefill_chunk=prefill_chunk,
        speculative=SpecConfig(NgramProposer(), k=4) if speculative else None,
    )
    free0 = len(eng.pool.free)
    chunks = []
    prefill = eng.runner.prefill
    eng.runner.prefill = lambda seq, ids: chunks.append(len(ids)) or prefill(seq, ids)
    reqs = replay(eng, trace, watch=check_blocks)
    for r, w, (_, ids, _m) in zip(reqs, want, trace, strict=True):
        assert r.output == w, f"request {r.id} ({tok.decode(ids)!r}, preempted {r.preemptions}x): {r.output} != {w}"
    assert {r.finish_reason for r in reqs} == {"stop", "length"}
    assert eng.stats["preemptions"] > 0, "the pool never ran dry: preemption is not exercised"
    assert len(eng.pool.free) == free0 and eng.pool.used_blocks() == 0, "blocks leaked"
    eng.block_manager.check([])
    if prefill_chunk is not None:
        assert max(chunks) <= prefill_chunk and max(len(ids) for _, ids, _ in trace) > prefill_chunk
    saved = eng.stats["cached_tokens"]
    if prefix_cache:
        assert saved > 0.3 * (saved + eng.stats["prefill_tokens"]), eng.prefix_cache_stats()
        assert eng.block_manager.stats["evictions"] > 0, "a small pool should evict cached blocks"
    else:
        assert saved == 0
    spec = eng.spec_stats()
    if speculative:  # proposals were made, some kept, and the verify steps emitted more than one token each
        assert spec["accepted"] > 0 and spec["tokens_per_step"] > 1.0, spec
        assert eng.stats["decode_steps"] < sum(len(r.output) for r in reqs) - len(reqs)
    else:
        assert spec["verify_rows"] == 0


def test_a_hit_reuses_blocks_but_never_the_last_prompt_token(model_tok):
    model, tok = model_tok
    eng = Engine(model, eos_id=None, block_size=4, prefix_cache=True)
    ids = tok.encode("import os\nimport sys")  # 20 tokens: five full blocks
    assert len(ids) == 20
    a = eng.submit(ids, 3)
    eng.run_until_done()
    b = eng.submit(ids, 3)
    eng.run_until_done()
    # b may take 4 blocks (16 tokens) from a: the fifth would leave no token to compute the logits from
    assert eng.stats["cached_tokens"] == 16 and eng.stats["prefill_tokens"] == 20 + 4
    assert a.output == b.output
    assert eng.prefix_cache_stats()["hit_rate"] == pytest.approx(16 / 40)


def test_shared_blocks_are_refcounted_and_outlive_one_holder(model_tok):
    model, tok = model_tok
    eng = Engine(model, eos_id=None, max_batch=4, block_size=4, prefix_cache=True)
    prefix = tok.encode("def forward(self, x):\n")  # 22 tokens: five full blocks
    first = eng.submit(prefix + tok.encode("a"), 10)
    eng.step()  # first is prefilled; its full blocks are registered
    second = eng.submit(prefix + tok.encode("b"), 30)
    eng.step()
    shared = first.blocks.table[:5]
    assert second.blocks.table[:5] == shared, "second should share the five prefix blocks"
    assert all(eng.block_manager.refs[b] == 2 for b in shared)
    eng.run_until_done()
    assert first.output == generate(model, torch.tensor([first.prompt_ids]), 10)[0].tolist()
    assert second.output == generate(model, torch.tensor([second.prompt_ids]), 30)[0].tolist()
    assert eng.pool.used_blocks() == 0


def test_lru_keeps_cached_blocks_free_and_evicts_the_oldest_first():
    pool = BlockPool(n_layers=1, num_blocks=6, block_size=2, n_kv_heads=1, head_dim=2)
    bm = BlockManager(pool, prefix_cache=True)
    seqs = []
    for toks in ([1, 2, 3, 4], [5, 6, 7, 8]):
        s = SeqBlocks(1)
        bm.allocate(s, bm.match(toks, 3), 4)
        s.lengths[:] = [4]
        bm.commit(s, toks)
        seqs.append(s)
    for s in seqs:
        bm.release(s)
    assert bm.num_free == 6 and len(bm.cached) == 4, "freed blocks stay cached and count as free"
    s = SeqBlocks(1)
    bm.allocate(s, bm.match([1, 2, 3, 4, 9], 4), 5)  # hit on [1, 2] and [3, 4]; one fresh block
    assert s.length == 4 and bm.stats["evictions"] == 0, "an unused block is handed out before a cached one"
    t = SeqBlocks(1)
    bm.allocate(t, [], 6)  # three fresh: one unused, then the two of [5..8]
    assert bm.stats["evictions"] == 2 and bm.match([5, 6, 7, 8], 4) == []
    bm.release(s)
    bm.release(t)
    bm.check([])


def test_chunked_prefill_keeps_running_streams_decoding(model_tok):
    model, tok = model_tok
    eng = Engine(model, eos_id=None, max_batch=4, prefill_chunk=16, max_step_tokens=32)
    streams = [eng.submit(tok.encode(p), 40) for p in ("def ", "x = ")]
    eng.step()
    long_ = eng.submit(tok.encode("import os\n" * 12), 5)  # 120 tokens: 8 chunks of 16
    steps = 0
    while not long_.output:
        before = [len(s.output) for s in streams]
        eng.step()
        steps += 1
        assert [len(s.output) for s in streams] == [n + 1 for n in before], "a stream stalled during the prefill"
    assert steps == 8
    eng.run_until_done()
    for r in streams + [long_]:
        assert r.output == generate(model, torch.tensor([r.prompt_ids]), r.max_tokens)[0].tolist()


def test_chunked_prefill_needs_budget_beyond_the_decode_rows(model_tok):
    model, _ = model_tok
    with pytest.raises(ValueError, match="max_step_tokens"):
        Engine(model, max_batch=8, max_step_tokens=8, prefill_chunk=4)
