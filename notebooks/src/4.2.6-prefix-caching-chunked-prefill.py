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
# - 推测解码 (speculative decoding)：一次验证前向确认多个 token，贪心输出不变；在 `generate` 和引擎里怎么用，
#   每步平均产出几个 token，在这个小模型上又是什么限制了它的加速。
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
# ## 4. 推测解码 (speculative decoding)：一次前向确认多个 token
#
# 解码每一步只产出 1 个 token。推测解码让一个便宜的提议者 (proposer) 先猜 k 个 token，模型把
# 「最后一个 token + k 个提议」放进**一次**前向：位置 i 的 logits 正是模型接受了前 i 个提议之后自己给出的分布。
#
# - **贪心**：从头比较，提议等于模型的 argmax 就接受；第一个不等处换成模型自己的 token；k 个全对时，第 k+1 个位置再多给一个。
#   输出与模型单独贪心生成逐 token 相同，变的只是前向的次数；
# - **采样**：提议 x 以 min(1, p(x)/q(x)) 的概率接受，被拒时从残差 (residual) max(0, p−q) 归一化后采样（Leviathan et al. 2023）。
#   提议是确定的（q 是 one-hot）时，这就是「以 p(x) 的概率接受，否则从去掉 x 的 p 里采样」：每个输出 token 的分布都与单独采样相同。
#   `tests/unit/test_speculative.py` 用 10 000 次抽样的总变差距离 (total variation distance) 检查这一点（界写在测试里），
#   也检查一个被拒时不用残差、直接从 p 采样的错误版本会被这个界拒掉；
# - **提议者**：提示查找 (prompt lookup, n-gram)：找最后 n 个 token 在前文里最近一次出现的位置，提议它后面的 k 个 token，
#   不需要第二个模型；`DraftModelProposer` 用一个更小的模型（字节词表，分词器天然相同）。
#
# 代码在 `course_lib/speculative.py`（提议者、`verify_greedy`、`verify_sampled`、`speculative_generate`）。
# `generate(model, ids, n, speculative=SpecConfig(NgramProposer(), k=4))` 走这条路（batch 1），调用之后
# `spec.stats` 里是每次验证产出的 token 数。引擎 `Engine(..., speculative=...)` 在每个解码步让每一行各自提议，
# 所有行的「待喂 token + 提议」在**一次** ragged 前向里验证（`ModelRunner.verify`：短的行在右边补占位 token，
# 因果注意力让它们影响不到任何真实 token）；被拒位置由 `BlockManager.truncate` 回滚，多出来的块还给池子。
# 提议只用池子还空着的块，所以推测永远不会引起抢占。引擎验证时每个位置都用该请求自己的采样器抽一个 token，
# 抽到与提议不同的就停：对确定的提议这正是上面的接受 / 拒绝规则，抽样的次数和顺序也与不推测时完全一样。

# %%
from course_lib.speculative import NgramProposer, SpecConfig

for text in ["import os\nimport sys\nimport ", "class Model(nn.Module):\n    def __init__(self, cfg):\n"]:
    ids = torch.tensor([tok.encode(text)])
    spec = SpecConfig(NgramProposer(), k=4)
    fast = generate(model, ids, 40, speculative=spec)
    same = fast.tolist() == generate(model, ids, 40).tolist()
    print(f"{text!r}: == plain greedy: {same} | {spec.stats.verify_steps} verify steps for 40 tokens, "
          f"{spec.stats.tokens_per_step:.2f} tokens per step | per step: {spec.stats.per_step}")
    assert same

# %% [markdown]
# 第一个 prompt 在重复自己（`import` 一行接一行），提示查找的 4 个提议每次都被接受，每次验证产出 5 个 token（上面逐步打印）；
# 第二个 prompt 的续写重复得少，很多步只产出 1 个（提议在第一个 token 就被拒，或者前文里根本找不到可以提议的 n-gram）。
# 两个 prompt 的输出都与普通贪心生成逐 token 相同（上面断言了）。
#
# 引擎里三者一起开：第 1 节的那 16 个请求（共享前缀、遇到 EOS 结束、小块池逼出抢占），前缀缓存 + 分块预填充 + 推测解码：

# %%
# NBVAL_CHECK_OUTPUT
eng = Engine(model, eos_id=NL, max_batch=8, num_blocks=40, block_size=4, prefix_cache=True, prefill_chunk=8,
             max_step_tokens=32, speculative=SpecConfig(NgramProposer(), k=4))
reqs = []
for i, (ids, m) in enumerate(trace):
    reqs.append(eng.submit(ids, m))
    if i % 2:
        eng.step()
eng.run_until_done()
st = eng.spec_stats()
print(f"{len(reqs)} requests, preemptions: {eng.stats['preemptions'] > 0}, cache hits: {eng.stats['cached_tokens'] > 0}, "
      f"proposals accepted: {st['accepted'] > 0}")
print("every request == generating it alone:", [r.output for r in reqs] == want)
print("free blocks after the trace == pool size:", len(eng.pool.free) == eng.pool.num_blocks)

# %% [markdown]
# ### 测量：留出文本上每步产出几个 token，验证 k+1 个 token 又要多花多少
#
# 5 段留出文本 (held-out) 作 prompt（各 96 个 token），贪心续写，batch 1，k = 4；每一轮交替跑普通 `generate` 与推测解码，
# 再单独计时一次「在缓存后面喂 1 个 token」和「喂 k+1 = 5 个 token」的前向。
#
# **先预测**：在留出文本上，每次验证前向平均产出多少个 token？（至少 1 个：模型自己的那个；全部猜对时 5 个。）

# %%
p = predict("4.2.6", "spec_tokens_per_step")

# %%
from course_lib.lab.serving import speculative_experiment
from course_lib.pretrained import heldout_tokens

held = heldout_tokens()
prompts = [held[i * 997 : i * 997 + 96][None].long() for i in range(pick(5, 2))]
rows = speculative_experiment(model, prompts, new=pick(96, 24), k=4, rounds=pick(3, 1))
print_table([{"round": r["round"], "plain tok/s": f"{r['plain_tok_s']:.0f}", "speculative tok/s": f"{r['spec_tok_s']:.0f}",
              "ratio": f"{r['spec_tok_s'] / r['plain_tok_s']:.2f}", "tokens per verify step": f"{r['tokens_per_step']:.2f}",
              "acceptance": f"{r['acceptance']:.2f}", "1-token forward (ms)": f"{1000 * r['forward_1_s']:.2f}",
              "5-token forward (ms)": f"{1000 * r['forward_k1_s']:.2f}",
              "cost ratio": f"{r['forward_k1_s'] / r['forward_1_s']:.2f}"} for r in rows])
med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
tps = med([r["tokens_per_step"] for r in rows])
cost = med([r["forward_k1_s"] / r["forward_1_s"] for r in rows])
speedup = med([r["spec_tok_s"] / r["plain_tok_s"] for r in rows])
weights_mb = sum(t.numel() * t.element_size() for t in model.parameters()) / 1e6
print(f"tokens per verify step per prompt (last round): {[round(x, 2) for x in rows[-1]['per_prompt']]}")
print(f"median: {tps:.2f} tokens per verify step; a 5-token forward costs {cost:.2f}x a 1-token one; "
      f"estimate tokens/step / cost = {tps / cost:.2f}x; measured speed-up {speedup:.2f}x")
print(f"weights: {weights_mb:.1f} MB (fp32); torch threads: {torch.get_num_threads()}")
assert cost < 4 and tps < 4, (cost, tps)  # five tokens cost far less than five forwards; far fewer than 5 kept

# %%
p.reveal(tps)

# %% [markdown]
# **读表：什么决定了加速**。一次验证产出「每步 token 数」个 token，却要付一次 k+1 个 token 的前向，所以加速比约为
# 「每步 token 数 ÷ 前向代价比」（上面打印的估计）。各轮的绝对速度差别很大（本机同时被其他程序占用），看比值的中位数。逐项看：
#
# - **前向代价比**：喂 5 个 token 的前向只比喂 1 个贵打印出来的那个倍数，远小于 5 倍（上面断言了小于 4）。这个 1.6 M 参数的
#   模型在 CPU 上是受固定开销限制的 (overhead-bound)：一次前向的时间主要花在与 token 数无关的部分（Python、每层十几个小算子的调度），
#   所以一次验证多算几个 token 花不了多少，这一项对推测解码有利；
# - **每步 token 数**：留出文本上，提示查找的提议大部分被拒（表里的接受率），每步产出的 token 数远少于 k+1 = 5，
#   各个 prompt 之间也差得多（逐个打印了）；同一个提议者在自己重复的代码上（本节第一个单元格）每步产出 5 个。
#   提示查找能拿到多少，取决于模型的续写有多像前文；
# - **估计里没算的**：提议者自己的时间（提示查找是 Python 循环）和裁剪缓存的时间要加上；普通解码每步在模型调用之外的开销
#   （采样、拼接）则被推测解码省掉的步数一起省掉了。所以实测的加速比可能略高于、也可能低于估计。
#
# 推测解码更划算的是另一种情况：解码受内存带宽限制 (bandwidth-bound) 的大模型（比如 GPU 上几十亿参数的模型），
# 每一步都要把全部权重读一遍，一步本身就很贵，提议者的开销相对可以忽略；再配一个真正会写这类文本的草稿模型 (draft model)，
# 每步 token 数才能更接近 k+1。本课没有训练这样的模型（在这台 CPU 上训练不动），所以这里不给那种情况的数字；
# 上面的表只说明这台机器上的这个小模型（issue 给那种模型定的目标，本课没有测）。
#
# ## 小结
#
# - 前缀缓存：整块、链式哈希做键、引用计数、释放后留在 LRU 里；省下的是共享部分的预填充，输出不变。
# - 分块预填充：每步 token 预算，长 prompt 分块，正在生成的请求不再被长停顿卡住；代价是长 prompt 自己的 TTFT。
# - 推测解码：提议 k 个、一次前向验证 k+1 个；贪心输出不变，采样分布不变；加速比约为「每步 token 数 ÷ 前向代价比」。
# - 三者都用同一个标准验证：每个请求都等于单独生成，块一个不漏地还回池里。
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
# - 把 `SpecConfig` 的 k 改成 1、2、8，预测每步 token 数和前向代价比各往哪个方向变，再用第 4 节的单元格实测。
