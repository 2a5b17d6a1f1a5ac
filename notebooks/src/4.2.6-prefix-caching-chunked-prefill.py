# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4.2.6 · 前缀缓存 (prefix caching) 与分块预填充 (chunked prefill)
#
# **学习目标**
# - 看懂今天的推理引擎（vLLM、SGLang、nano-vllm）在连续批处理之后的两个改进：
#   共享前缀的 KV 块只算一次（前缀缓存），长 prompt 分块预填充、不再卡住正在生成的请求（分块预填充）；
# - 读懂本课引擎里对应的代码：`course_lib/block_manager.py` 的链式哈希 (hash chain) 与引用计数 (reference count)，
#   `course_lib/scheduler.py` 的每步 token 预算 (token budget)；
# - 验证两者都不改变输出：每个请求的贪心输出仍与单独生成逐 token 相同，跑完后没有泄漏的块；
# - 实测：前缀缓存省下多少预填充 token、首 token 延迟 (TTFT) 降多少；分块预填充让正在生成的请求的
#   token 间延迟 (inter-token latency, ITL) 降多少，又让长 prompt 自己的 TTFT 付出多少代价。
#
# **前置知识**：4.2.5 的连续批处理引擎（admit / decode / evict、分页块、抢占）。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 40 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import torch

from course_lib.config import pick
from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.lab.plotting import print_table
from course_lib.lab.serving import chunked_prefill_experiment, prefix_cache_experiment
from course_lib.pretrained import load_reference_model

torch.manual_seed(0)
torch.set_num_threads(1)   # pinned: the comparisons below are about scheduling, not thread scaling
print("torch threads:", torch.get_num_threads())
model, tok = load_reference_model()
print("context:", model.config.max_seq_len, "tokens")

# %% [markdown]
# ## 1. 前缀缓存：相同的前缀，K/V 只算一次
#
# 很多请求的开头是一样的：同一段系统提示词 (system prompt)、同一组 few-shot 示例。位置 p 的 K/V 只取决于
# 位置 0..p 的 token，所以两个请求只要前 p+1 个 token 相同，这些位置的 K/V 就完全相同，没有必要再算一遍。
#
# 引擎以**整块**为单位共享（`course_lib/block_manager.py`，与 nano-vllm 的 `block_manager.py` 同样的思路）：
#
# 1. **键是一条链**：第 i 块的键 = `chain_hash(第 i-1 块的键, 第 i 块的 token ids)`。父块的键串进来，
#    所以一个键代表「从第 0 个 token 到这一块末尾」的整个前缀，而不只是这一块的内容；
# 2. **登记 (commit)**：一次前向写完 K/V 之后，把新写满的块登记进 `cached`（键 → 块号）；没写满的块还会被写，不登记；
# 3. **查找 (match)**：新请求接纳时，按链逐块查，第一次查不到就停；查到的块直接放进它的块表，引用计数 +1，
#    只预填充剩下的 token。新请求的最后一个 prompt token 永远自己算：要用它的 logits 采样第一个输出 token；
# 4. **释放 (release)**：请求结束或被抢占时，引用计数 −1；**降到 0** 才回到空闲列表。登记过的块回到空闲列表的最前面，
#    键还留着，所以之后还能命中；池真的需要空间时，最久没用的缓存块才被取走并删掉键（LRU 淘汰）。
#
# 为什么命中的块不会「正在被改写」：只有写满的块才会被登记和共享，而一个序列只在自己长度之后的位置写入，
# 这些位置都在它共享的块之后。
#
# 下面两个请求共享 22 个字节的前缀（`block_size=4`，即 5 个整块）：第二个请求接纳后，它的块表前 5 块就是第一个请求的块，
# 这些块的引用计数是 2。

# %%
# NBVAL_CHECK_OUTPUT
eng = Engine(model, eos_id=None, max_batch=4, block_size=4, prefix_cache=True)
prefix = tok.encode("def forward(self, x):\n")
a = eng.submit(prefix + tok.encode("a"), 10)
eng.step()
b = eng.submit(prefix + tok.encode("b"), 10)
eng.step()
print("prefix tokens:", len(prefix), "| block tables: a", a.blocks.table, " b", b.blocks.table)
print("reference counts of a's first 5 blocks:", [eng.block_manager.refs[x] for x in a.blocks.table[:5]])
print("prefill tokens computed:", eng.stats["prefill_tokens"], "| taken from the cache:", eng.stats["cached_tokens"])
eng.run_until_done()
same = all(r.output == generate(model, torch.tensor([r.prompt_ids]), 10)[0].tolist() for r in (a, b))
print("both == generating alone:", same, "| blocks in use after both finished:", eng.pool.used_blocks(),
      "| cached blocks kept:", len(eng.block_manager.cached))

# %% [markdown]
# 第一个请求的 23 个 token 全部自己算；第二个请求只算了 3 个（第 21–23 个 token，第 6 块没写满，不共享）。
# 两个请求结束后，所有块都回到了空闲列表，但登记过的块还留在缓存里，下一个同样开头的请求还能命中。
#
# ### 正确性：抢占 + 前缀缓存
#
# nano-vllm 的用户直到 256 个并发序列时才发现一个抢占 (preemption) × 前缀缓存的 bug（PR #211）：被抢占的请求重新接纳时，
# 调度器按「缓存命中前」的长度算了预算。本课的调度器先查缓存、再按没命中的部分算预算，
# `tests/unit/test_prefix_chunked.py` 用 50 个随机请求（共享前缀、长度各异、遇到 EOS 结束、小块池逼出抢占）检查：
# 前缀缓存开 / 关、分块预填充开 / 关的四种组合下，每个请求都与单独生成逐 token 相同，每一步之后引用计数都与块表一致，
# 跑完后空闲块数等于初始值。这里跑同一类检查的一个小版本：

# %%
# NBVAL_CHECK_OUTPUT
import random

NL = ord("\n")
PREFIXES = ["def forward(self, x):\n    h = self.norm(x)\n    ", "import os\nimport sys\nfrom pathlib import Path\n"]
rng = random.Random(0)
trace = [(tok.encode(rng.choice(PREFIXES) + rng.choice(["", "x", "return ", "# "])), rng.randint(1, 20))
         for _ in range(16)]
eng = Engine(model, eos_id=NL, max_batch=8, num_blocks=40, block_size=4, prefix_cache=True, prefill_chunk=8,
             max_step_tokens=32)
reqs = []
for i, (ids, m) in enumerate(trace):
    reqs.append(eng.submit(ids, m))
    if i % 2:
        eng.step()
eng.run_until_done()
want = [generate(model, torch.tensor([ids]), m, eos_id=NL, pad_id=tok.pad_id)[0].tolist() for ids, m in trace]
print(f"{len(reqs)} requests, preemptions: {eng.stats['preemptions'] > 0}, "
      f"cache hits: {eng.stats['cached_tokens'] > 0}")
print("every request == generating it alone:", [r.output for r in reqs] == want)
print("free blocks after the trace == pool size:", len(eng.pool.free) == eng.pool.num_blocks)

# %% [markdown]
# ## 2. 测量：80% 的请求共享 128 个 token 的前缀
#
# 负载：泊松到达 (Poisson arrival)，80% 的请求以同一段 128 个 token 的系统提示词开头（参考模型上下文 256 的一半），
# 其余 20% 一样长但什么也不共享，每个请求再接一句自己的问题。到达率取「不开缓存的引擎在本机能服务的速率」的 0.7 倍
# （先在同类请求的一次突发上测出来），同一条到达序列分别交给缓存关 / 开的引擎，两者轮流先跑。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`）：开缓存后实际算的预填充 token 数是不开时的多少倍？
# 提示：数一数每种请求各要算多少个 token（`block_size=16`，128 恰好是 8 个整块）。测完以后揭晓。

# %%
from course_lib.lab.quiz import predict

p = predict("4.2.6", "prefill_ratio")

# %%
rows = prefix_cache_experiment(model, tok, n=pick(40, 12), rounds=pick(3, 1))
off = [r for r in rows if not r["cache"]]
on = [r for r in rows if r["cache"]]
assert all(x["outputs"] == y["outputs"] for x, y in zip(off, on, strict=True)), "the cache changed the tokens"
print(f"{off[0]['requests']} requests per trace at {off[0]['rate']:.1f} req/s, {len(off)} round(s); "
      "outputs identical with and without the cache")
print_table([{"round": x["round"], "prefill tokens off": x["prefill_tokens"], "on": y["prefill_tokens"],
              "ratio": f"{y['prefill_tokens'] / x['prefill_tokens']:.2f}", "hit rate on": f"{y['hit_rate']:.2f}",
              "p95 TTFT off (ms)": f"{1000 * x['ttft_p95']:.1f}", "on (ms)": f"{1000 * y['ttft_p95']:.1f}",
              "TTFT ratio": f"{y['ttft_p95'] / x['ttft_p95']:.2f}"} for x, y in zip(off, on, strict=True)])
prefill_ratio = sorted(y["prefill_tokens"] / x["prefill_tokens"] for x, y in zip(off, on, strict=True))[len(off) // 2]
ttft_ratio = sorted(y["ttft_p95"] / x["ttft_p95"] for x, y in zip(off, on, strict=True))[len(off) // 2]
assert prefill_ratio < 0.5, prefill_ratio
print(f"median: prefill tokens on/off = {prefill_ratio:.2f}x (target <= 0.4x: {prefill_ratio <= 0.4}); "
      f"p95 TTFT on/off = {ttft_ratio:.2f}x (target <= 0.5x: {ttft_ratio <= 0.5})")

# %%
p.reveal(prefill_ratio)

# %% [markdown]
# **读表**：省下的预填充 token 基本是算术（上面断言了不到一半）；各轮略有不同，因为每轮抽的是另一条到达序列，
# 哪些请求共享前缀也跟着变（「不开」一列每轮一样，「开」一列不一样）。
# TTFT 不按 token 的比例下降：这次每一轮 p95 TTFT 的比值都比 token 的比值大，有一轮开缓存反而更慢，中位数也没有达到 0.5 倍的目标。
# 它很吵（看各轮之间的差别）：p95 只由少数几个排队最久的请求决定，而这台机器同时被其他程序占用；
# 这个 1.6 M 参数的模型在 CPU 上一次前向有不小的固定开销，少算的 token 并不按比例变成少花的时间。
# GPU 上的大模型里预填充时间更接近与 token 数成正比，共享前缀的收益应当更接近 token 的比值（这里测不了）。本节打印的比值只是本机的实测。
#
# ## 3. 分块预填充：长 prompt 不再卡住正在生成的请求
#
# 4.2.5 的引擎在接纳请求时一次前向预填充整个 prompt。一个 200 个 token 的 prompt 在某一步到达，
# 这一步里其他正在生成的请求都要等它算完，它们的下一个 token 就晚了一大截（nano-vllm #73 就在要这个功能）。
#
# 分块预填充（vLLM 的调度器同样如此）：`Engine(..., prefill_chunk=C)` 让每一步最多预填充 C 个 prompt token，
# 每一步的总 token 数（每个解码行 1 个 + 预填充块）也不超过 `max_step_tokens`。长 prompt 于是分几步预填充完，
# 每一步里正在生成的请求照常各出一个 token，而它们等的预填充最多 C 个 token。代码在 `course_lib/scheduler.py` 的 `Scheduler.schedule`：
# 先让已接纳、还没预填充完的 prompt 各走一块，再按先到先服务接纳新请求；`remaining(req)` 就是它的
# 块表里还缺多少个位置（`len(prefill_ids) - req.blocks.length`），不需要额外的状态。
#
# 测量：4 个请求一直在生成；每 8 步到达一个 240 个 token 的长 prompt。记录每个 token 出来的时刻，
# 比较 4 个请求相邻 token 的间隔（ITL），分块（C = 32）与不分块各跑几轮，轮流先跑。

# %%
rows = chunked_prefill_experiment(model, chunk=32, rounds=pick(3, 1), n_long=pick(8, 3))
plain = [r for r in rows if r["chunk"] is None]
chunk = [r for r in rows if r["chunk"] is not None]
assert all(x["outputs"] == y["outputs"] for x, y in zip(plain, chunk, strict=True)), "chunking changed the tokens"
print("outputs identical with and without chunking")
print_table([{"round": x["round"], "ITL p50 plain (ms)": f"{1000 * x['itl_p50']:.1f}",
              "chunked (ms)": f"{1000 * y['itl_p50']:.1f}", "ITL p95 plain (ms)": f"{1000 * x['itl_p95']:.1f}",
              "chunked (ms) ": f"{1000 * y['itl_p95']:.1f}", "p95 ratio": f"{y['itl_p95'] / x['itl_p95']:.2f}",
              "long-prompt TTFT plain (ms)": f"{1000 * x['long_ttft_p50']:.1f}",
              "chunked (ms)  ": f"{1000 * y['long_ttft_p50']:.1f}"} for x, y in zip(plain, chunk, strict=True)])
itl_ratio = sorted(y["itl_p95"] / x["itl_p95"] for x, y in zip(plain, chunk, strict=True))[len(plain) // 2]
ttft_cost = sorted(y["long_ttft_p50"] / x["long_ttft_p50"] for x, y in zip(plain, chunk, strict=True))[len(plain) // 2]
print(f"median: p95 ITL chunked/plain = {itl_ratio:.2f}x (target <= 0.5x: {itl_ratio <= 0.5}); "
      f"long prompts' TTFT chunked/plain = {ttft_cost:.2f}x")

# %% [markdown]
# **读表**：分块并不减少计算，它只是把一次长停顿拆成几次短停顿：正在生成的请求等的预填充最多 32 个 token，
# 上一行打印了 p95 ITL 的比值和它是否达到 0.5 倍的目标（这次没有达到）。代价有两份，表里都有：
# 长 prompt 自己的首 token 要等它的所有块都算完（打印的 TTFT 比值）；每一步多了一次预填充前向，
# 所以分块时的 ITL p50 比不分块时高。本课的引擎把预填充块和解码行分成两次前向；真正的引擎（vLLM）把它们放进
# **同一次**前向（一个 ragged batch），这份固定开销就省掉了。C 取多大是延迟与吞吐的权衡，vLLM 用
# `max_num_batched_tokens` 调它。
#
# ## 小结
#
# - 前缀缓存：整块、链式哈希做键、引用计数、释放后留在 LRU 里；省下的是共享部分的预填充，输出不变。
# - 分块预填充：每步 token 预算，长 prompt 分块，正在生成的请求不再被长停顿卡住；代价是长 prompt 自己的 TTFT。
# - 两者都用同一个标准验证：每个请求都等于单独生成，块一个不漏地还回池里。
#
# ## 练习
#
# 打开 `exercises/ex426_prefix_cache.py`，写前缀缓存的 `match`（查找）、`commit`（登记）和 `release`（按引用计数释放）。
# 评分器把你的三个函数装进 `BlockManager`，用真实的引擎跑带共享前缀和抢占的请求：输出逐 token 相同、
# 每一步之后引用计数与块表一致、没有泄漏的块、缓存确实命中。

# %%
from course_lib.lab.grading import check

result = check("4.2.6")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.6")

# %% [markdown]
# ## 下一步
#
# - 在 `bench/prefix_cache.py` 里把共享比例从 80% 改成 20%，预测预填充 token 的比值会变成多少，再实测。
# - 把 `prefill_chunk` 改成 8 和 128，看正在生成的请求的 p95 ITL 与长 prompt 的 TTFT 怎样此消彼长。
# - 推测解码 (speculative decoding) 是另一条路：它不减少预填充，而是让一次验证前向确认多个 token。
