"""Grader for ex425: the scheduler's admit/evict step, plugged into course_lib.engine.Engine.

Oracle: every request generated alone with course_lib.generate.generate (greedy, token for
token), plus the pool's block count and the scheduling rules the stub's docstring states.
"""

import pytest
import torch

from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.pretrained import load_reference_model

EX = "ex425_scheduler"
NL = ord("\n")  # EOS for these tests: the reference model writes newlines often, so rows end mid-batch
PROMPTS = [
    "def ",
    "class Foo(object):\n    def __init__(self",
    "import",
    "    for i in range(len(x)):\n        ",
    "x = ",
    "# comment",
    "if __name__ == ",
    "return",
    "try:\n    ",
    "    self.",
    "with open(",
    "print(",
]


@pytest.fixture(scope="module")
def model_tok():
    return load_reference_model()


def learner_engine(impl, model, **kw):
    mod = impl(EX)

    class LearnerEngine(Engine):
        def admit(self):
            if self.policy == "continuous":
                mod.admit(self)

        def evict(self):
            mod.evict(self)

    return LearnerEngine(model, eos_id=NL, **kw)


def replay(engine, tok, n, every, watch=None):
    reqs, step = [], 0
    while len(reqs) < n or engine.has_work:
        if len(reqs) < n and step % every == 0:
            i = len(reqs)
            reqs.append(engine.submit(tok.encode(PROMPTS[i % len(PROMPTS)]), 3 + (7 * i) % 23))
        engine.step()
        if watch:
            watch(engine)
        step += 1
        assert step < 3000, "调度器卡住了：3000 步后仍有请求没完成（admit 没有接纳请求？）"
    return reqs


def alone(model, req):
    return generate(model, torch.tensor([req.prompt_ids]), req.max_tokens, eos_id=NL, pad_id=256)[0].tolist()


def test_each_request_equals_generating_it_alone(impl, model_tok):
    model, tok = model_tok
    eng = learner_engine(impl, model, max_batch=6, block_size=8)
    sizes = []
    reqs = replay(eng, tok, n=24, every=2, watch=lambda e: sizes.append(len(e.running)))
    assert max(sizes) > 1, "请求从来没有共享过一个批次：admit 每步应接纳所有放得下的请求"
    for r in reqs:
        want = alone(model, r)
        assert r.output == want, (
            f"请求 {r.id}（prompt {tok.decode(r.prompt_ids)!r}）的输出与单独生成不同：\n期望 {want}\n实际 {r.output}"
        )


def test_finished_rows_free_their_blocks_at_once(impl, model_tok):
    model, tok = model_tok
    eng = learner_engine(impl, model, max_batch=6, block_size=8)

    def watch(e):
        done = [r for r in e.running if r.done]
        assert not done, f"第 {e.steps} 步之后，已结束的请求 {[r.id for r in done]} 仍在 running 里：evict 应把它们移出"
        held = sum(len(r.blocks.table) for r in e.running)
        assert e.pool.used_blocks() == held, (
            f"第 {e.steps} 步之后池里占用 {e.pool.used_blocks()} 块，"
            f"但正在运行的请求只持有 {held} 块：结束的请求要 engine.release(req)"
        )

    replay(eng, tok, n=16, every=1, watch=watch)
    assert eng.pool.used_blocks() == 0, "全部请求结束后，所有 KV 块都应回到空闲列表"


def test_batch_fills_up_to_max_batch_and_never_beyond(impl, model_tok):
    model, tok = model_tok
    eng = learner_engine(impl, model, max_batch=3)
    for _ in range(5):
        eng.submit(tok.encode("def "), 20)
    eng.step()
    assert len(eng.running) == 3, f"max_batch=3、等待 5 个短请求：第一步应接纳 3 个，实际 {len(eng.running)} 个"
    sizes = []
    while eng.has_work:
        eng.step()
        sizes.append(len(eng.running))
    assert max(sizes) <= 3, f"running 超过了 max_batch=3：最多 {max(sizes)} 行"


def test_step_token_budget_and_fifo(impl, model_tok):
    model, tok = model_tok
    eng = learner_engine(impl, model, max_batch=8, max_step_tokens=20)
    long_ = [eng.submit(list(range(65, 80)), 10) for _ in range(2)]  # 15 tokens each
    short = eng.submit(tok.encode("x"), 10)  # 1 token: must not jump the queue
    eng.step()
    assert [r in eng.running for r in long_ + [short]] == [True, False, False], (
        "预算 20 个 token、队首两个请求各 15 个 token：第一步只能接纳第一个；第三个短请求也不能插队（严格 FIFO）"
    )
    eng.run_until_done()
    firsts = [r.step_first for r in long_ + [short]]
    assert firsts == sorted(firsts), f"请求应按到达顺序开始生成，实际开始于第 {firsts} 步"


def test_pool_pressure_outputs_still_exact(impl, model_tok):
    model, tok = model_tok
    eng = learner_engine(impl, model, max_batch=6, num_blocks=20, block_size=4)
    reqs = replay(eng, tok, n=20, every=1)
    for r in reqs:
        assert r.output == alone(model, r), f"KV 块紧张（会发生抢占 preemption）时，请求 {r.id} 的输出变了"
    assert eng.pool.used_blocks() == 0, "全部请求结束后，所有 KV 块都应回到空闲列表"
