"""Grader for ex426: the prefix cache's lookup / insert / release, plugged into the real engine.

Oracle: every request generated alone with course_lib.generate.generate (greedy, token for token);
the reference counts recomputed from the live block tables after every engine step; the pool's
free count before and after the trace.
"""

import random

import pytest
import torch

from course_lib.block_manager import BlockManager, SeqBlocks
from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.kv_cache import BlockPool
from course_lib.pretrained import load_reference_model

EX = "ex426_prefix_cache"
NL = ord("\n")
PREFIXES = [
    "def forward(self, x):\n    h = self.norm(x)\n    ",
    "import os\nimport sys\nfrom pathlib import Path\n",
    "class Model(nn.Module):\n    def __init__(self, cfg):\n        super().__init__()\n        self.",
]
SUFFIXES = ["", "x", "return ", "for i in range(", "# ", "if x is None:", "y = x +", "print("]


@pytest.fixture(scope="module")
def model_tok():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: one thread is fastest on a shared machine
    yield load_reference_model()
    torch.set_num_threads(n)


def learner_block_manager(impl, pool):
    mod = impl(EX)

    class LearnerBlockManager(BlockManager):
        def match(self, token_ids, limit):
            return mod.match(self, token_ids, limit)

        def commit(self, seq, token_ids):
            mod.commit(self, seq, token_ids)

        def release(self, seq):
            mod.release(self, seq)

    return LearnerBlockManager(pool, prefix_cache=True)


def learner_engine(impl, model, **kw):
    eng = Engine(model, eos_id=NL, prefix_cache=True, **kw)
    eng.block_manager = eng.scheduler.blocks = learner_block_manager(impl, eng.pool)
    return eng


def check_counts(eng):
    """Chinese messages for what BlockManager.check asserts: counts == live tables, free == unreferenced."""
    bm = eng.block_manager
    want = [0] * eng.pool.num_blocks
    for r in eng.running:
        for b in r.blocks.table if r.blocks is not None else []:
            want[b] += 1
    free = eng.pool.free
    for b in range(eng.pool.num_blocks):
        if want[b] and b in free:
            raise AssertionError(
                f"第 {eng.steps} 步之后，块 {b} 还被 {want[b]} 个正在运行的序列引用，却在空闲列表里："
                "引用计数 (refcount) 降到 0 之前不能把块放回去，否则它会被分给别的序列并被改写"
            )
        if not want[b] and b not in free:
            raise AssertionError(f"第 {eng.steps} 步之后，块 {b} 没有任何序列引用，却不在空闲列表里：泄漏了 (leak)")
    assert len(set(free)) == len(free), f"第 {eng.steps} 步之后，空闲列表里有重复的块：同一个块被释放了两次"
    assert bm.refs == want, f"第 {eng.steps} 步之后，引用计数与块表不一致：期望 {want}，实际 {bm.refs}"


def random_trace(tok, n, seed):
    rng = random.Random(seed)
    out, step = [], 0
    for i in range(n):
        text = (
            (rng.choice(SUFFIXES) + "z" * rng.randint(1, 9))
            if i % 5 == 4
            else rng.choice(PREFIXES) + rng.choice(SUFFIXES)
        )
        out.append((step, tok.encode(text), rng.randint(1, 24)))
        step += rng.choice([0, 0, 1, 2])
    return out


def replay(eng, trace):
    reqs, i, step = [], 0, 0
    while i < len(trace) or eng.has_work:
        while i < len(trace) and trace[i][0] <= step:
            reqs.append(eng.submit(trace[i][1], trace[i][2]))
            i += 1
        eng.step()
        check_counts(eng)
        step += 1
        assert step < 5000, "引擎卡住了：5000 步后仍有请求没完成"
    return reqs


def alone(model, ids, m):
    return generate(model, torch.tensor([ids]), m, eos_id=NL, pad_id=256)[0].tolist()


def small_manager(impl):
    return learner_block_manager(impl, BlockPool(n_layers=1, num_blocks=8, block_size=2, n_kv_heads=1, head_dim=2))


def filled(bm, toks):
    """A sequence that holds ``toks`` (as if a forward had written them), committed."""
    s = SeqBlocks(1)
    bm.allocate(s, bm.match(toks, len(toks) - 1), len(toks))
    s.lengths[:] = [len(toks)]
    bm.commit(s, toks)
    return s


def test_lookup_follows_the_hash_chain(impl):
    bm = small_manager(impl)
    a = filled(bm, [1, 2, 3, 4, 5])  # two full blocks + one partial
    assert len(bm.cached) == 2, (
        f"[1,2,3,4,5]、每块 2 个 token：应登记 2 个整块（没写满的第 3 块不登记），实际 {len(bm.cached)} 个"
    )
    assert bm.match([1, 2, 3, 4, 7, 7], 6) == a.table[:2], "前两块与已登记的序列相同：match 应返回这两块"
    assert bm.match([1, 2, 3, 4], 3) == a.table[:1], "limit=3 只覆盖 1 个整块：match 最多返回 1 块"
    assert bm.match([9, 9, 3, 4], 4) == [], (
        "第 0 块不同时，第 1 块即使也是 [3, 4] 也不能命中：键要用父块的键串起来 (chain_hash(parent, ...))"
    )
    assert bm.refs[a.table[0]] == 1 and a.table[0] not in bm.pool.free, "match 只查不改：不能动引用计数或空闲列表"


def test_refcounts_keep_a_shared_block_until_its_last_holder(impl):
    bm = small_manager(impl)
    a = filled(bm, [1, 2, 3, 4, 5])
    b = filled(bm, [1, 2, 3, 4, 6])
    shared = a.table[:2]
    assert b.table[:2] == shared, "第二个序列应共享前两块"
    bm.release(a)
    for blk in shared:
        assert bm.refs[blk] == 1, f"第一个持有者释放后，共享块 {blk} 的引用计数应为 1，实际 {bm.refs[blk]}"
        assert blk not in bm.pool.free, (
            f"共享块 {blk} 还被第二个序列引用，却回到了空闲列表：引用计数 (refcount) 降到 0 之前不能释放"
        )
    bm.release(b)
    assert sorted(bm.pool.free) == list(range(8)) and len(bm.pool.free) == 8, (
        "全部释放后，8 个块都应在空闲列表里，且各一次"
    )
    assert len(bm.cached) == 2 and bm.match([1, 2, 3, 4, 9], 4) == shared, (
        "释放后登记过的块仍应留在缓存里，可以再次命中"
    )
    assert bm.pool.free[-1] not in shared, (
        "没登记过的块应排在空闲列表末尾（先被取走），登记过的排在最前面（最后才被取走）"
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_engine_trace_with_shared_prefixes_and_preemption(impl, model_tok, seed):
    model, tok = model_tok
    trace = random_trace(tok, 30, seed)
    eng = learner_engine(impl, model, max_batch=8, num_blocks=40, block_size=4)
    free0 = len(eng.pool.free)
    reqs = replay(eng, trace)
    for r, (_, ids, m) in zip(reqs, trace, strict=True):
        want = alone(model, ids, m)
        assert r.output == want, (
            f"请求 {r.id}（prompt {tok.decode(ids)!r}，被抢占 {r.preemptions} 次）的输出与单独生成不同：\n"
            f"期望 {want}\n实际 {r.output}"
        )
    assert eng.stats["preemptions"] > 0, "（评分器自检）这条序列应当触发抢占"
    assert len(eng.pool.free) == free0, f"全部请求结束后空闲块应是 {free0} 个，实际 {len(eng.pool.free)} 个"
    saved = eng.stats["cached_tokens"]
    assert saved > 0.3 * (saved + eng.stats["prefill_tokens"]), (
        f"共享前缀的请求几乎没有命中缓存：只省下 {saved} 个预填充 token；commit 要登记写满的块，release 要保留它们的登记"
    )
