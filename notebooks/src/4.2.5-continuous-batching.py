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
# # 4.2.5 · 连续批处理 (continuous batching) 与一个真正的推理服务
#
# **学习目标**
# - 量出静态批处理 (static batching) 浪费在哪里：一个长请求让整批已结束的行空转；
# - 一步一步看懂连续批处理引擎：接纳 (admit)、预填充 (prefill)、一次批量解码 (decode)、移出 (evict)，
#   KV 块来自 4.2.3 的块池 (`BlockPool`)，块池用完时抢占 (preemption)；
# - 验证：20 多个不同时刻到达、长度各异、中途遇到 EOS 的请求，每一个的贪心输出都与单独生成逐 token 相同；
# - 用有界的泊松到达 (Poisson arrival) 负载比较两种批处理：吞吐量 (tokens/s)、首 token 延迟 (TTFT)、
#   每 token 延迟 (TPOT) 的 p50/p95；
# - 启动一个 OpenAI 兼容的 HTTP 服务，用官方 `openai` 客户端调用它（非流式与流式）。
#
# **前置知识**：4.2.3 的 KV 缓存与分页缓存 (paged KV cache)，4.2.4 的左填充、掩码与位置编号。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 40 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import matplotlib.pyplot as plt
import torch

from course_lib.block_manager import SeqBlocks
from course_lib.config import pick
from course_lib.engine import Engine
from course_lib.generate import generate
from course_lib.lab.plotting import new_axes, print_table
from course_lib.lab.quiz import predict
from course_lib.lab.serving import batching_experiment, run_staggered
from course_lib.model_runner import RaggedPagedCache
from course_lib.pretrained import load_reference_model

torch.manual_seed(0)
torch.set_num_threads(1)   # pinned: the comparisons below are about scheduling, not thread scaling
print("torch threads:", torch.get_num_threads())
model, tok = load_reference_model()

# %% [markdown]
# ## 1. 静态批处理浪费在哪里
#
# 4.2.4 的 `generate` 一次处理一个固定的 batch：它一直跑到**最长**的那个回答结束。服务端如果这样做
# （静态批处理），已经结束的行要么继续陪跑（白算），要么被移出但空出的位置没人补上；而在这期间新到的请求只能排队，
# 等整批结束。下面用同一个引擎的两种策略跑同样的 16 个请求（`max_batch=8`，回答长度大多很短，两个很长），
# 记录每个请求从开始生成到结束所在的调度步 (step)。

# %%
LENGTHS = [6, 9, 5, 48, 7, 10, 6, 8, 5, 7, 40, 9, 6, 8, 5, 7]
PROMPTS = ["def ", "import os\n", "class Foo:\n    ", "    return ", "for i in range(", "x = ", "# ", "if __name__"]


def run_policy(policy):
    eng = Engine(model, eos_id=None, max_batch=8, policy=policy)
    reqs = [eng.submit(tok.encode(PROMPTS[i % len(PROMPTS)]), n) for i, n in enumerate(LENGTHS)]
    eng.run_until_done()
    return eng, reqs


runs = {p: run_policy(p) for p in ("static", "continuous")}
for policy, (eng, reqs) in runs.items():
    s = eng.stats
    print(f"{policy:>10}: {eng.steps:3d} steps, {s['decode_rows']:4d} rows computed, {s['idle_rows']:4d} idle "
          f"({s['idle_rows'] / s['decode_rows']:.0%})")
static_idle = runs["static"][0].stats["idle_rows"] / runs["static"][0].stats["decode_rows"]
assert static_idle > 0.3 and runs["continuous"][0].stats["idle_rows"] == 0
assert runs["continuous"][0].steps < runs["static"][0].steps

# %%
fig, axes = new_axes("Same 16 requests, max_batch = 8", "engine step", "request", ncols=2)
for ax, (policy, (eng, reqs)) in zip(axes, runs.items(), strict=True):
    batch_end = {}
    if policy == "static":   # a static batch ends when its longest request ends
        for r in reqs:
            batch_end[r.step_first] = max(batch_end.get(r.step_first, 0), r.step_done)
    for i, r in enumerate(reqs):
        ax.barh(i, r.step_done - r.step_first + 1, left=r.step_first, color="tab:green")
        if policy == "static" and batch_end[r.step_first] > r.step_done:
            ax.barh(i, batch_end[r.step_first] - r.step_done, left=r.step_done + 1, color="lightgrey")
        if r.step_first > 0:
            ax.barh(i, r.step_first, left=0, color="tab:orange", alpha=0.25)
    ax.set_title(f"{policy}: {eng.steps} steps")
    ax.invert_yaxis()
axes[0].set_ylabel("request")
from matplotlib.patches import Patch

axes[1].legend(handles=[Patch(color="tab:green", label="generating"), Patch(color="lightgrey", label="idle row (static)"),
                        Patch(color="tab:orange", alpha=0.25, label="waiting in queue")], loc="lower right")
plt.tight_layout(); plt.show()

# %% [markdown]
# 左图：第一批的 8 行里，长请求（48 个 token）让其余 7 行在它们结束之后继续占着 batch（灰色）；第二批的请求
# 要等第一批全部结束才能开始（橙色是排队）。右图：一个请求结束，下一步就有等待中的请求补上它的位置，
# 同样的工作用更少的调度步做完。上面的单元格断言了这一点：静态策略有超过 30% 的行在空转，连续策略为 0，
# 而且总步数更少。

# %% [markdown]
# ## 2. 引擎一步一步
#
# `course_lib/engine.py` 的 `Engine.step()` 每次做三件事：
#
# 1. **admit（接纳）**：按到达顺序，只要还有空行 (`max_batch`)、本步的 token 预算 (`max_step_tokens`) 和足够的空闲 KV 块，
#    就把等待队列的队首拿出来，**单独**预填充它的 prompt（batch 为 1，没有填充），采样它的第一个 token；
# 2. **decode（解码）**：对所有正在运行的序列做**一次**前向，每行输入自己最新的 token，每行采样一个新 token
#    （`course_lib.generate.sample_next`，每个请求有自己的温度、top_p 和随机数生成器）；
# 3. **evict（移出）**：输出了 EOS 或达到 `max_tokens` 的请求立刻离开 batch，它的块回到块池。
#
# 难点在第 2 步：各行已缓存的长度不同。`RaggedPagedCache` 让每行把新的 K/V 写进**自己的块、自己的下一个位置**，
# 读出时拼成一个左填充的视图——这正是 4.2.4 的布局，所以注意力掩码和由掩码推出的位置编号 (position ids)
# 都可以原样使用，模型代码一行不改。

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.kv_cache import BlockPool

pool = BlockPool.for_model(model, num_blocks=8, block_size=4)
seqs = [SeqBlocks(model.config.n_layers) for _ in range(3)]
with torch.no_grad():
    for s, text in zip(seqs, ["def f(x):", "import", "x = 1"], strict=True):   # prefill each alone, into its own blocks
        ids = tok.encode(text)
        s.table.extend(pool.allocate() for _ in range(-(-(len(ids) + 1) // pool.block_size)))
        model(torch.tensor([ids]), past_key_values=RaggedPagedCache(pool, [s]), use_cache=True)
view = RaggedPagedCache(pool, seqs)
print("cached lengths:", [s.length for s in seqs], "| block tables:", [s.table for s in seqs])
print("attention mask for one more token (0 = left padding):")
print(view.attention_mask(1))

# %% [markdown]
# 下面手动驱动一个小引擎：A、B 在第 0 步到达，C 在第 1 步到达。`max_batch=2`，所以 C 要排队，
# 等 A 结束（它的块回到池里）才能在下一步进来。每一步之后打印谁在运行、谁在等待、每个请求已生成几个 token、还剩多少空闲块。

# %%
# NBVAL_CHECK_OUTPUT
eng = Engine(model, eos_id=None, max_batch=2, block_size=4, num_blocks=16)
arrivals = {0: [("A", "def ", 4), ("B", "import", 9)], 1: [("C", "x = ", 3)]}
reqs = {}
for step in range(12):
    for name, text, n in arrivals.get(step, []):
        reqs[name] = eng.submit(tok.encode(text), n)
    if not eng.has_work:
        break
    eng.step()
    name = {r.id: k for k, r in reqs.items()}
    print(f"step {step:2d}: running {''.join(name[r.id] for r in eng.running):<3} "
          f"waiting {''.join(name[r.id] for r in eng.waiting):<3} free blocks {len(eng.pool.free):2d} | tokens "
          + " ".join(f"{k}={len(r.output)}{'(done)' if r.done else ''}" for k, r in reqs.items()))

# %% [markdown]
# ### 正确性：每个请求都等于单独生成
#
# 连续批处理只改变「什么时候算」，不能改变「算出什么」。标准与 4.2.4 相同：24 个请求每两步到达一个，prompt 长度、
# `max_tokens` 各不相同；把换行符当作 EOS，于是许多请求在 batch 中途结束。每个请求的贪心输出都要与
# `course_lib.generate.generate` 单独生成它时逐 token 相同（`tests/unit/test_engine.py` 里是同一个检查）。

# %%
# NBVAL_CHECK_OUTPUT
NL = ord("\n")
CODE = ["def ", "class Foo(object):\n    def __init__(self", "import", "    for i in range(len(x)):\n        ",
        "x = ", "# comment", "if __name__ == ", "return", "try:\n    ", "    self.", "with open(", "print("]


def staggered(engine, n=24, every=2):   # course_lib.lab.serving.run_staggered: the same driver the tests use
    return run_staggered(engine, [tok.encode(c) for c in CODE], n=n, every=every)


def alone(r):
    return generate(model, torch.tensor([r.prompt_ids]), r.max_tokens, eos_id=NL, pad_id=tok.pad_id)[0].tolist()


eng = Engine(model, eos_id=NL, max_batch=6, block_size=8)
reqs, sizes = staggered(eng)
same = [r.output == alone(r) for r in reqs]
print(f"{len(reqs)} requests, largest batch {max(sizes)}, ended by EOS: {sum(r.finish_reason == 'stop' for r in reqs)}, "
      f"by max_tokens: {sum(r.finish_reason == 'length' for r in reqs)}")
print("every request == generating it alone:", all(same))
print("blocks still in use after the last request:", eng.pool.used_blocks())

# %% [markdown]
# ### 块池用完：抢占
#
# 分页缓存按需分配块：一个序列每写满 `block_size` 个位置才要一个新块。于是可能出现：正在运行的序列要新块，
# 而池已经空了。本课的引擎采用 vLLM 的重算 (recompute) 策略：抢占**最新加入**的序列，释放它的块，
# 把它放回等待队列的最前面；重新接纳时，把 prompt 和它已经生成的 token 一起预填充，再接着生成。
# 一个永远放不下的请求（比上下文长，或比整个池大）在提交时就被拒绝，并说明原因。

# %%
# NBVAL_CHECK_OUTPUT
eng = Engine(model, eos_id=NL, max_batch=6, num_blocks=20, block_size=4)
reqs, _ = staggered(eng, n=20, every=1)
print("preemptions:", eng.stats["preemptions"] > 0, "| outputs unchanged:", all(r.output == alone(r) for r in reqs))
try:
    eng.submit(tok.encode("x") * 30, 60)
except ValueError as e:
    print("refused:", e)

# %% [markdown]
# ## 3. 负载实验：泊松到达
#
# 真实的请求不会整整齐齐地一起来。`batching_experiment` 生成有界的泊松到达序列（请求之间的间隔服从指数分布），
# 回答长度大多是 4–16 个 token、四分之一是 64–96 个；同一条到达序列分别交给静态和连续两种策略。
#
# - 到达率用**负载** (load) 表示：连续引擎在这台机器上每秒能处理的请求数（由一次 batch 8 的解码步的实测时间估算）的倍数，
#   所以在快机器和慢机器上含义相同；
# - 不睡眠：引擎空闲而下一个请求还没到时，虚拟时钟直接跳到它的到达时刻；
# - 两种策略在同一轮里交替先后（偶数轮静态先，奇数轮连续先），以免机器一时变慢只影响其中一种。
#
# 指标：吞吐量 = 生成的 token 数 / 从第一个请求到达到最后一个请求结束的时间；TTFT = 第一个 token 时刻 − 到达时刻；
# TPOT = 第一个 token 之后平均每个 token 的时间。
#
# **先预测**（凭第 1 节的图；点选后按「记下预测」，或 `p.guess("B")`，实验跑完后揭晓）：

# %%
p = predict("4.2.5", "throughput_ratio")

# %%
LOADS = pick((0.5, 1.0, 2.0), (0.5, 2.0))
rows = batching_experiment(model, [tok.encode(p) for p in PROMPTS], loads=LOADS, n=pick(48, 20), rounds=pick(3, 1))
print(f"one batch-8 decode step: {1000 * rows[0]['step_s']:.1f} ms")


def med(load, policy, key):
    xs = sorted(r[key] for r in rows if r["load"] == load and r["policy"] == policy)
    return xs[len(xs) // 2]


table = []
for load in LOADS:
    for policy in ("static", "continuous"):
        table.append({"load": load, "req/s": med(load, policy, "rate"), "policy": policy,
                      "tok/s": med(load, policy, "tok_s"), "TTFT p50 ms": 1000 * med(load, policy, "ttft_p50"),
                      "TTFT p95 ms": 1000 * med(load, policy, "ttft_p95"), "TPOT p50 ms": 1000 * med(load, policy, "tpot_p50"),
                      "TPOT p95 ms": 1000 * med(load, policy, "tpot_p95"), "idle rows": med(load, policy, "idle_rows")})
print_table(table)

# %%
fig, (a1, a2, a3) = new_axes("Static vs continuous batching (median over rounds)", "offered load", "", ncols=3)
for policy, style in (("static", "s--"), ("continuous", "o-")):
    a1.plot(LOADS, [med(x, policy, "tok_s") for x in LOADS], style, label=policy)
    a2.plot(LOADS, [1000 * med(x, policy, "ttft_p95") for x in LOADS], style, label=policy)
    a3.plot(LOADS, [1000 * med(x, policy, "tpot_p50") for x in LOADS], style, label=policy)
a1.set_title("throughput"); a1.set_ylabel("generated tokens/s"); a1.legend()
a2.set_title("p95 time to first token"); a2.set_ylabel("ms"); a2.set_yscale("log")
a3.set_title("p50 time per output token"); a3.set_ylabel("ms")
for a in (a1, a2, a3):
    a.set_xlabel("offered load (x continuous capacity)")
plt.tight_layout(); plt.show()

# %%
top = max(LOADS)
throughput_ratio = med(top, "continuous", "tok_s") / med(top, "static", "tok_s")
ttft_ratio = med(top, "static", "ttft_p95") / med(top, "continuous", "ttft_p95")
tpot_ratio = med(top, "continuous", "tpot_p50") / med(top, "static", "tpot_p50")
low = min(LOADS)
low_ratio = med(low, "continuous", "tok_s") / med(low, "static", "tok_s")
low_ttft_ratio = med(low, "static", "ttft_p95") / med(low, "continuous", "ttft_p95")
print(f"load {top}: continuous / static throughput = {throughput_ratio:.2f}x (bench target >= 1.5x); "
      f"p95 TTFT static / continuous = {ttft_ratio:.1f}x; p50 TPOT continuous / static = {tpot_ratio:.2f}x")
print(f"load {low}: continuous / static throughput = {low_ratio:.2f}x; p95 TTFT static / continuous = {low_ttft_ratio:.1f}x")
growth = {policy: med(top, policy, "tok_s") / med(low, policy, "tok_s") for policy in ("static", "continuous")}
print(f"throughput at load {top} / at load {low}: static {growth['static']:.2f}x, continuous {growth['continuous']:.2f}x")
assert throughput_ratio > 1 and ttft_ratio > 1
assert low_ttft_ratio > 1
assert low_ratio < throughput_ratio and growth["static"] < growth["continuous"], (low_ratio, growth)

# %%
p.reveal(throughput_ratio)

# %% [markdown]
# 上面的单元格断言：在最高负载下，连续批处理的吞吐更高、p95 首 token 延迟更低（`bench/continuous_batching.py`
# 用 3 轮交替测量检查吞吐 ≥ 1.5 倍）。原因就是第 1 节的图：过载时静态批处理每步算的行里有很大一部分属于已经结束的请求，
# 而新请求要等整批结束才能开始。较低负载下的吞吐比值见上面的第二行（本机本次的实测，随到达序列波动较大），它比最高负载下小：
# 请求稀疏时，连续引擎常常在等请求，它的吞吐受到达率限制；负载升高，它的吞吐跟着升高。静态批处理却几乎不随负载增长
# （第三行打印了两种策略「最高负载 / 最低负载」的吞吐之比，单元格断言静态的更小）：在最低负载下它就已经被整批等待拖住了。
# 在较低负载下，静态批处理的 p95 首 token 延迟同样更高（也断言了），因为请求到达时常常恰好有一批正在跑，要等它全部结束。
#
# 每 token 延迟 (TPOT) 没有谁一定更低：连续批处理让新请求的预填充插在别人的解码步之间，正在生成的请求的某些步会变慢；
# 表里的 TPOT 比值是这台机器上的实测。把长 prompt 的预填充切成小块、和解码混在同一步里（分块预填充，chunked prefill）
# 正是 vLLM、SGLang 为此做的改进。

# %% [markdown]
# ## 4. 一个真正的服务：OpenAI 兼容的 HTTP 接口
#
# `course_lib/serve.py` 用 FastAPI + uvicorn 提供 `POST /v1/completions`（`prompt`、`max_tokens`、`temperature`、`top_p`、
# `stream`、`stop`）、`GET /v1/models` 和 `GET /health`。引擎在**一个**后台线程里循环调用 `step()`：
# 解码是阻塞的张量计算，不能放进 asyncio 事件循环；每个 HTTP 请求把自己交给引擎，再从自己的 `asyncio.Queue`
# 里等 token，引擎线程用 `loop.call_soon_threadsafe` 把 token 放进去。在终端里一条命令就能启动：
#
# ```bash
# python -m course_lib.serve --model course_lib/assets/reference_model      # 只监听 127.0.0.1:8000，Ctrl-C 停止
# ```
#
# 这里在 notebook 里把它放进后台线程，端口由操作系统挑选，然后用官方的 `openai` 客户端调用。

# %%
# DEMO_TEXT
import httpx
import openai

from course_lib.lab.demo import END, STOP, settings_line
from course_lib.serve import ServerThread, create_app

engine = Engine(model, eos_id=tok.eos_id, max_batch=8)
with ServerThread(create_app(engine, tok, "reference_model")) as srv:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed")
    print("models:", [m.id for m in client.models.list()])
    # the sampling settings a person would use, with a fixed seed so the stored output is reproducible
    r = client.completions.create(model="reference_model", prompt="def ", max_tokens=pick(160, 24),
                                  temperature=0.8, top_p=0.95, seed=0, stop=[STOP])
    print(settings_line(seed=0, top_k=None, top_p=0.95))
    print("def " + r.choices[0].text)
    print(END)
    print("finish_reason:", r.choices[0].finish_reason, "| usage:", r.usage)
    print("streaming:", end=" ")
    for chunk in client.completions.create(model="reference_model", prompt="import", max_tokens=pick(40, 16),
                                           temperature=0.8, top_p=0.95, seed=1, stream=True):
        print(chunk.choices[0].text, end="|", flush=True)
    print()
    bad = httpx.post(srv.url + "/v1/completions", json={"model": "reference_model", "prompt": "x", "max_tokens": -1})
    print("bad request:", bad.status_code, bad.json())

# %% [markdown]
# 流式输出的 `|` 标出了每个服务器发送事件 (server-sent events, SSE) 的边界。错误的请求得到 4xx 和一个点名字段的 JSON
# 错误（OpenAI 的错误格式）；引擎里一个请求出错只让这个请求失败。`tests/unit/test_serve.py` 用真实的客户端检查这些，
# 并在本机回环 (loopback) 上发 200 个并发请求，逐一与单独生成的结果对比：没有丢失，没有错乱。

# %% [markdown]
# ## 小结
#
# - 静态批处理等最长的请求：已结束的行空转、新请求排队。连续批处理以解码步为单位调度，结束即移出、有空即补上。
# - 引擎 = admit（按到达顺序，受 batch、token 预算和空闲块限制）+ 一次批量 decode（左填充视图 + 掩码 + 位置编号，
#   K/V 在各自的分页块里）+ evict（归还块）；块池用完时抢占最新的序列，之后重算。
# - 正确性标准不变：每个请求都等于单独生成（贪心，逐 token）。
# - 负载越高，连续批处理的吞吐优势越大；它的 p95 首 token 延迟在每个负载下都更低；每 token 延迟要实测。
# - 一个 OpenAI 兼容的服务只是在引擎外面加一层：HTTP 在事件循环里，引擎在自己的线程里，两者用队列交流。
#
# ## 练习
#
# 打开 `exercises/ex425_scheduler.py`，写调度器的 `admit` 和 `evict`。评分器把你的两个函数装进 `Engine`，
# 然后跑上面的等价性检查、块归还、batch 上限和先到先服务 (FIFO) 的检查：

# %%
from course_lib.lab.grading import check

result = check("4.2.5")

# %% [markdown]
# ## 自检
#
# 预测题在第 3 节的负载实验之前已经问过；这里是理解题和一道迁移题。

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.5")

# %% [markdown]
# ## 下一步
#
# - 用 `python -m course_lib.serve` 启动服务，用 `curl` 或 `openai` 客户端从另一个终端调用它，观察 `/health` 里的 running / waiting。
# - 在 `bench/continuous_batching.py` 里把 `max_batch` 改成 4 和 16，看吞吐比值如何变化；再把回答长度改成全部相同，
#   预测一下静态批处理还会浪费多少。
