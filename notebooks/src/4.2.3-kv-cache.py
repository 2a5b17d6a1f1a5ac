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
# # 4.2.3 · KV 缓存 (KV cache)：动态、静态、int8、分页
#
# **学习目标**
# - 把生成拆成两个阶段：**prefill**（一次处理整个提示）和 **decode**（每步一个 token，旧 token 的 K/V 从缓存读）；
# - 比较动态缓存 (DynamicCache，拼接增长) 与静态缓存 (StaticCache，预分配、按位置写入)，并验证它们与不用缓存逐 token 相同
#   （有损的 int8 缓存例外：看它在哪里、为什么偏离）；
# - 测出不同上下文长度下有/无缓存的 decode 速度，画图；用公式 `2 × 层数 × kv 头数 × head_dim × 序列长度 × batch × 字节数` 核对实测缓存大小；
# - 进阶：int8 量化缓存（省多少内存、质量代价多大）；分页缓存 (paged KV cache：固定大小的块、块表、空闲链表) 与预分配相比浪费多少内存。
#
# **前置知识**：注意力机制；4.2.1 的参考模型。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 45 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import torch

from course_lib.config import pick, quick_mode
from course_lib.generate import decode_step, generate, make_cache, prefill
from course_lib.kv_cache import (BlockPool, DynamicCache, PagedKVCache, QuantizedKVCache, StaticCache,
                                 kv_cache_bytes_formula)
from course_lib.lab.measure import decode_speed_vs_context, long_context_copy, paged_vs_static_memory
from course_lib.lab.plotting import new_axes, print_table
from course_lib.lab.quiz import predict
from course_lib.pretrained import load_reference_model

torch.manual_seed(0)
model, tok = load_reference_model()
cfg = model.config
print(f"layers {cfg.n_layers}, heads {cfg.n_heads}, kv heads {cfg.n_kv_heads} (GQA), head_dim {cfg.head_dim}; "
      f"{model.num_parameters() / 1e6:.1f}M params, {model.num_parameters() * 4 / 1e6:.1f} MB of fp32 weights")

# %% [markdown]
# ## 1. Prefill 与 decode
#
# 没有缓存时，生成第 t 个 token 要把前面 t−1 个 token 全部重算一遍（每步 O(t) 个 token 的计算）。
# 有了缓存：prefill 一次算完提示并把每层的 K、V 存下来；之后每步只算一个新 token 的 Q/K/V，K/V 追加进缓存，注意力读全部缓存。

# %%
ids = torch.tensor([tok.encode("def __init__(self, ")])
cache = DynamicCache()
with torch.no_grad():
    logits = prefill(model, ids, None, cache)               # phase 1: the whole prompt
    print("after prefill: cached positions =", cache.get_seq_length(), "| K of layer 0:", tuple(cache.keys[0].shape))
    out = []
    for _ in range(20):                                       # phase 2: one token per step
        nxt = logits.argmax(-1)
        out.append(int(nxt))
        logits = decode_step(model, nxt, None, cache)
print("after decode: cached positions =", cache.get_seq_length())
print(repr(tok.decode(out)))

# %% [markdown]
# ## 2. 每种缓存与「不用缓存」逐 token 比较
#
# 动态、静态、分页缓存存的是和无缓存时完全相同的 K/V，只是放法不同，所以贪心输出必须**逐 token 相同**（下面断言）。
# int8 缓存是有损的：它存的是舍入后的 K/V，输出可能在某一步分叉；表后打印分叉的那一步无缓存模型前两名 token 的 logit 差。
# 静态缓存预先分配 `max_len` 个位置，按位置写入，不再分配内存（CUDA graph / `torch.compile` 需要固定地址）。
# `attend_full=True` 时它像 HF 的 StaticCache 一样每步把整块缓冲区交给注意力，模型的 `attended_length()` 钩子让因果掩码遮住还没写入的位置。
# （`tests/unit/test_kv_cache.py` 在 CI 里检查同样的事。）

# %%
flips = []
prompts = pick(["import os\nimport sys\n\n", "class Foo:\n    def ", "    return"], ["class Foo:\n    def "])
N = pick(40, 12)
rows = []
for p in prompts:
    x = torch.tensor([tok.encode(p)])
    ref = generate(model, x, N, use_cache=False)
    caches = {"dynamic": DynamicCache(), "static": StaticCache.for_model(model, 1, x.shape[1] + N),
              "static(full)": StaticCache.for_model(model, 1, x.shape[1] + N, attend_full=True),
              "int8": QuantizedKVCache(), "paged": make_cache("paged", model, 1, x.shape[1] + N)}
    row = {"prompt": p[:14].replace("\n", "\\n")}
    for name, c in caches.items():
        out = generate(model, x, N, cache=c)
        row[name] = "same" if out.tolist() == ref.tolist() else "DIFFERENT"
        if name == "int8" and row[name] == "DIFFERENT":   # where the lossy cache first picks another token
            k = next(i for i, (a, b) in enumerate(zip(ref[0].tolist(), out[0].tolist(), strict=True)) if a != b)
            a, b = ref[0, k], out[0, k]          # the uncached model's token, the int8 cache's token
            with torch.no_grad():
                exact_logits = model(torch.cat([x, ref[:, :k]], 1)).logits[0, -1]
                c8 = QuantizedKVCache()
                lg = prefill(model, x, None, c8)     # replay the int8 run up to that step
                for i in range(k):
                    lg = decode_step(model, ref[:, i], None, c8)
            lg = lg.reshape(-1)
            flips.append({"prompt": row["prompt"], "new token": k,
                          "margin a-b, no cache": float(exact_logits[a] - exact_logits[b]),
                          "margin a-b, int8 cache": float(lg[a] - lg[b]),
                          "max |logit diff| there": float((lg - exact_logits).abs().max())})
    rows.append(row)
print_table(rows)
exact = ("dynamic", "static", "static(full)", "paged")
assert all(r[name] == "same" for r in rows for name in exact), rows
if flips:
    print("int8 cache: the first new token where it picks b instead of the uncached model's a")
    print_table(flips)
else:
    print("int8 cache: the same greedy tokens as without a cache for every prompt in this run")

# %% [markdown]
# ## 3. 速度：有缓存 vs 无缓存，随上下文长度变化
#
# 参考模型训练时 `max_seq_len=256`；RoPE 表不存在权重里，而是由配置算出，所以 `long_context_copy` 用同样的权重建一个
# `max_seq_len` 更大的模型来测速度（超过 256 的位置模型没训练过，但速度与内容无关）。

# %%
big = long_context_copy(model, 1088)
contexts = pick([64, 128, 256, 512, 1024], [64, 128, 256])
speed = decode_speed_vs_context(big, contexts, new_tokens=pick(16, 4), repeats=pick(2, 1))
print_table(speed)

# %%
import matplotlib.pyplot as plt

fig, ax = new_axes("Decode speed vs context length (batch 1, CPU)", "context length (tokens)", "decode tokens/s")
ax.plot(contexts, [r["cache_tok_s"] for r in speed], "o-", label="with KV cache")
ax.plot(contexts, [r["no_cache_tok_s"] for r in speed], "s-", label="no cache (recompute all)")
ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.legend(); plt.show()
ratios = [r["cache_tok_s"] / r["no_cache_tok_s"] for r in speed]
print(f"cache / no-cache: x{ratios[0]:.1f} at {contexts[0]} tokens -> x{ratios[-1]:.1f} at {contexts[-1]} tokens")
slow = {k: speed[-1][k] / speed[0][k] - 1 for k in ("cache_tok_s", "no_cache_tok_s")}
print(f"from {contexts[0]} to {contexts[-1]} tokens: with cache {speed[0]['cache_tok_s']:.0f} -> "
      f"{speed[-1]['cache_tok_s']:.0f} tok/s ({slow['cache_tok_s']:+.0%}), without {speed[0]['no_cache_tok_s']:.0f} -> "
      f"{speed[-1]['no_cache_tok_s']:.0f} tok/s ({slow['no_cache_tok_s']:+.0%})")
# the directions the text states: the cache wins, by more as the context grows, and slows down less
if not quick_mode():
    assert ratios[-1] > 1.0 and ratios[-1] > ratios[0], speed
    assert slow["cache_tok_s"] > slow["no_cache_tok_s"], slow

# %% [markdown]
# 无缓存时每步的计算量随上下文线性增长，速度随之下降；有缓存时每步只算一个新 token，但注意力要读的缓存随上下文变长，
# 所以它也变慢，只是慢得少得多（上面最后一行打印了两者从最短到最长上下文的变化）。单次测量在忙碌的机器上有噪声，
# 表里相邻两行的顺序可能颠倒；两者之比随上下文增大，单元格里的断言检查了这几个方向。

# %% [markdown]
# ### 3b. 同样的测量，换一个 22M 参数的模型
#
# 参考模型很小（参数量和 fp32 权重大小在本课开头打印了），每步 decode 的算量很少。`speed_config()` 是随机初始化的
# d512 × 8 层的模型（参数量和权重大小在下面打印），它的 decode 受内存带宽限制（4.0.6 的 roofline 量过同一个模型）；
# 无缓存时每步要把整段上下文重新算一遍，算量随上下文线性增长。下表在同样的上下文长度上，缓存的倍数都比参考模型的大。
# 快速模式下用小配置和短上下文，只检查代码能跑。

# %%
from course_lib.lab.measure import speed_config
from course_lib.model import DIYModel

n_speed = DIYModel(speed_config()).num_parameters()
print(f"speed_config(): {n_speed / 1e6:.1f}M params, {n_speed * 4 / 1e6:.0f} MB of fp32 weights")
big_speed = decode_speed_vs_context(speed_config(), pick([64, 256, 512], [64, 128]), new_tokens=pick(8, 2),
                                    repeats=pick(2, 1))
print(f"torch threads: {torch.get_num_threads()}")
print_table(big_speed)
big_ratios = [r["cache_tok_s"] / r["no_cache_tok_s"] for r in big_speed]
print(f"22M model, cache / no-cache: x{big_ratios[0]:.1f} at {big_speed[0]['context']} tokens -> "
      f"x{big_ratios[-1]:.1f} at {big_speed[-1]['context']} tokens")
if not quick_mode():   # quick mode's two short contexts are too close to tell apart on a busy machine
    assert big_ratios[-1] > 1.0 and big_ratios[-1] > big_ratios[0], big_speed

# %% [markdown]
# 最后一行是这次测到的倍数：上下文越长，无缓存的一步要重算的 token 越多，缓存的优势越大（单元格里的断言检查了这个方向）。
# `bench/kv_cache.py` 的目标说的就是这个 22M 模型：1 个线程、512 个 token 的上下文时 ≥ 20×（上表 512 那一行的 speedup）。

# %% [markdown]
# ### 3c. 编译的快速路径：静态缓存 + `torch.compile`
#
# 有了缓存，一步 decode 只算一个 token，剩下的时间有一部分是 Python 和算子调度的开销：几十个小算子，每个都要从 Python 发起
# （4.0.6 第 2 节的 profile 量过这个模型的 decode 里矩阵乘法之外占多少）。
# gpt-fast 的做法是把整个 decode 步骤交给 `torch.compile`，让它把这些小算子融合成少数几个生成的 C++（CPU）或 Triton（GPU）kernel。
# 这要求每一步的形状都不变、也不依赖每步都变的 Python 数字，否则每个新位置都会触发重新编译：
# - `TensorPositionCache`：预分配的静态缓存，下一个写入位置存在一个**张量**里（`index_copy_` 写入），每步返回整个缓存，
#   因果掩码由同一个位置张量算出，遮住还没写的位置；
# - 模型前向在这条路径上不读回任何设备上的值（没有 `int(...)`、`.item()`），所以没有图中断 (graph break)：
#   `tests/unit/test_compiled_decode.py` 用 `torch._dynamo.explain` 检查 decode 步骤是 1 个图、0 次中断，并且 token 与 eager 完全相同；
# - `generate(..., compile=True)` 用这条路径（要求没有填充、batch 固定）。
#
# 代价是第一次调用时的编译时间（下面打印出来）；在 CPU 上它需要一个 C++ 编译器。

# %%
from course_lib.lab.measure import compiled_vs_eager

cmp = compiled_vs_eager(speed_config(), batch_size=1, prompt_len=32, new_tokens=pick(32, 8), rounds=pick(3, 1))
if not cmp["available"]:
    print("compiled decode skipped:", cmp["reason"])
else:
    print(f"compile (warm-up) time: {cmp['compile_s']:.1f} s, paid once per process and batch size")
    print(f"decode tok/s, batch 1: eager {cmp['eager_tok_s']:.1f} (range {cmp['eager_range'][0]:.1f}-{cmp['eager_range'][1]:.1f}), "
          f"compiled {cmp['compiled_tok_s']:.1f} (range {cmp['compiled_range'][0]:.1f}-{cmp['compiled_range'][1]:.1f}): "
          f"x{cmp['speedup']:.2f}")
    if cmp["speedup"] > 1:
        gain_s = 1 / cmp["eager_tok_s"] - 1 / cmp["compiled_tok_s"]   # seconds saved per generated token
        print(f"compiling pays for itself after about {cmp['compile_s'] / gain_s:,.0f} generated tokens")
    else:
        print("the compiled decode step was not faster than eager in this run")

# %% [markdown]
# 上面打印了编译时间、两种路径的中位数和范围，以及编译时间要生成多少个 token 才能赚回来。
# 加速来自省掉的 Python 和算子调度开销，不是更少的算量；受内存带宽限制的部分，编译也省不掉——那是量化（4.2.2）的事。
# 这里只测了一个模型大小：每步算量更少的模型，调度开销占比更大，能省的比例也可能更大，但这需要你自己测。
# 编译要花上面打印的那些秒数，只有在要生成的 token 数远多于上面「赚回来」的那个数时才划算。

# %% [markdown]
# ## 4. 缓存有多大？公式 vs 实测

# %%
rows = []
for B, T in [(1, 128), (4, 128), (8, 256)]:
    c = DynamicCache()
    with torch.no_grad():
        model(torch.randint(0, 256, (B, T)), past_key_values=c, use_cache=True)
    formula = kv_cache_bytes_formula(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, T, B, 4)
    rows.append({"batch": B, "seq": T, "formula_bytes": formula, "measured_bytes": c.nbytes(), "equal": formula == c.nbytes()})
print("2 x layers x kv_heads x head_dim x seq x batch x 4 bytes (fp32)")
print_table(rows)
print("GQA saves", cfg.n_heads // cfg.n_kv_heads, "x: with n_kv_heads = n_heads the cache would be",
      kv_cache_bytes_formula(cfg.n_layers, cfg.n_heads, cfg.head_dim, 256, 8, 4), "bytes")

# %% [markdown]
# ## 5. 进阶：int8 量化缓存
#
# 每个 token、每个头一个 scale（沿 head_dim），K 和 V 都按 token 量化。KIVI 等工作把 K 按**通道**量化（K 有少数离群通道），
# 但按通道的 scale 跨越很多 token，需要把 token 分组并保留一段全精度的最新 token；按 token 量化可以一个 token 一个 token 地追加。
# 下面测内存和质量代价：teacher forcing（每个位置都喂真实的下一个 token）下逐位置比较 logits。
#
# **先预测**：

# %%
p = predict("4.2.3", "int8_cache_ratio")

# %%
from course_lib.data import eval_batches
from course_lib.pretrained import heldout_tokens
from course_lib.quantize import logits_divergence

x = next(eval_batches(heldout_tokens(), pick(200, 32), 4, 1))[0]
with torch.no_grad():
    res = {}
    for name, c in (("fp32", DynamicCache()), ("int8", QuantizedKVCache())):
        outs = [model(x[:, :8], past_key_values=c, use_cache=True).logits]
        for t in range(8, x.shape[1]):
            outs.append(model(x[:, t:t + 1], past_key_values=c, use_cache=True).logits)
        res[name] = (torch.cat(outs, 1), c.nbytes())
d = logits_divergence(res["fp32"][0], res["int8"][0])   # the same KL / top-1 as lesson 4.2.2's table
kl, top1 = d["kl"], d["top1_agreement"]
fp32_bytes, int8_bytes = res["fp32"][1], res["int8"][1]
bf16_bytes = fp32_bytes // 2          # the same tensors stored in a 16-bit dtype: 2 bytes instead of 4 per value
print(f"cache bytes: fp32 {fp32_bytes:,} | bf16 {bf16_bytes:,} | int8 {int8_bytes:,} "
      f"(int8 = {int8_bytes / fp32_bytes:.2f}x of fp32, {int8_bytes / bf16_bytes:.2f}x of bf16)")
assert 0.5 < int8_bytes / bf16_bytes < 0.6, "int8 values + one fp32 scale per head_dim values: about 0.56x of a 16-bit cache"
max_diff = float((res["fp32"][0] - res["int8"][0]).abs().max())
print(f"quality: max |logit diff| {max_diff:.4f}, KL {kl:.2e} nats/token, top-1 agreement {top1:.4f}")

# %%
p.reveal(int8_bytes / fp32_bytes)

# %% [markdown]
# 每个值 1 字节，再加每 head_dim = 32 个值一个 4 字节的 scale，平均每个值 1.125 字节：是 fp32 缓存的 0.28×，
# 但真正的服务系统本来就用 16 位（bf16/fp16）缓存，和它比只省到 **0.56×**——省下的是一小半，不是四分之三。
# **质量代价**：K/V 的舍入误差让 logits 最多偏移上面打印的 max |logit diff|，KL 很小，但 top-1 一致率不是 1：
# 在少数位置，前两名 token 的 logit 本来就很接近，这点偏移就让 argmax 换了人。第 2 节表里 int8 的 `DIFFERENT`
# 就是这样来的：那张小表的两列是分叉那一步两个候选 token 的 logit 差，无缓存时为正（选 a），int8 缓存下变成负（选 b）。
# 贪心生成一旦在某一步选了别的 token，后面的每一步都接在不同的前缀后面，所以整段输出都不同了。
# 所以 int8 缓存用「最大 logit 偏差、KL、top-1 一致率」来验收，而不是「逐 token 相同」。

# %% [markdown]
# ## 6. 进阶：分页缓存 (paged KV cache)
#
# 服务端事先不知道每个回答会多长。预分配缓存只能给每个序列留 `max_len` 个位置，大部分空着。
# 分页缓存（vLLM 的 PagedAttention 的思路）把缓存切成固定大小的块 (block)：所有序列共享一个块池，每个序列有一张块表 (block table)
# 记录它的块，块从空闲链表 (free list) 取、序列结束后还回去。

# %%
pool = BlockPool.for_model(model, num_blocks=24, block_size=16)
seqs = {name: PagedKVCache(pool, 1) for name in ("A", "B", "C")}
with torch.no_grad():
    for (name, c), n in zip(seqs.items(), (20, 70, 33), strict=True):
        generate(model, torch.randint(0, 256, (1, n)), 10, cache=c)
for name, c in seqs.items():
    print(f"seq {name}: {c.get_seq_length():3d} tokens -> block table {c.block_tables[0]}")
print("free blocks:", len(pool.free), "of", pool.num_blocks)
seqs["B"].free()
print("after B finished, free blocks:", len(pool.free))
d = PagedKVCache(pool, 1)
with torch.no_grad():
    generate(model, torch.randint(0, 256, (1, 50)), 5, cache=d)
print("new seq D reuses B's blocks:", d.block_tables[0])

# %%
lengths = [n // pick(1, 4) for n in (40, 700, 130, 260, 35, 900, 75, 510)]
max_len = pick(1024, 256)
m = paged_vs_static_memory(big, lengths, max_len=max_len, block_size=16)
print_table([{"scheme": f"preallocated (max_len {max_len} each)", "MB": m["static_bytes"] / 1e6, "wasted": m["static_waste"]},
             {"scheme": "paged (16-token blocks)", "MB": m["paged_bytes"] / 1e6, "wasted": m["paged_waste"]},
             {"scheme": "tokens actually cached", "MB": m["token_bytes"] / 1e6, "wasted": 0.0}])
print(f"paged / preallocated = {m['paged_bytes'] / m['static_bytes']:.2f}x")

# %% [markdown]
# 分页后每个序列最多浪费不到一个块（< 16 个位置）；预分配浪费的是 `max_len − 实际长度`。省下来的内存可以拿去放更多并发序列；4.2.4 测的就是并发 (batch) 越大、吞吐越高。

# %% [markdown]
# ## 小结
#
# - 生成 = prefill（整段提示，一次）+ decode（每步一个 token，读缓存）。缓存让每步不再重算整段上下文；注意力读缓存的时间仍随上下文增长，但慢得多。
# - 缓存大小 = 2 × 层数 × kv 头数 × head_dim × 长度 × batch × 字节数；GQA 减少 kv 头数，int8 减少字节数，分页减少浪费。
# - 精确的缓存（动态、静态、分页）用「与无缓存逐 token 相同」来验证；有损的 int8 缓存可能在前两名 logit 很接近的一步分叉，
#   它的质量代价用最大 logit 偏差、KL 和 top-1 一致率量化。
#
# ## 练习
#
# 1. `exercises/ex423_kv_attention_step.py`：带缓存的一步注意力（热身）。
# 2. `exercises/ex423_kv_block.py`：把 KV 缓存接进一个完整的小模型（含 GQA）。文件里是一个能用但没有缓存的
#    模型；你给 `Attention.forward` 和 `TinyLM.forward` 加上 `past_key_values` / `use_cache` 和位置偏移，
#    改动的行标 `# NEW`（这几行 diff 就是这一课）。评分：带缓存的贪心生成与不带缓存的逐 token 相同、
#    logits 误差 ≤ 1e-5、分块 prefill 与一次算完相同、缓存字节数等于上面的公式。
#
# 卡住时运行 `hint("ex423_kv_block")`，每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("ex423_kv_block") when stuck
result = check("4.2.3")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.3")   # 预测题在第 5 节的测量之前已经问过

# %% [markdown]
# ## 下一步
#
# 4.2.4：把长度不同的多个提示放进一个 batch 一起生成——左填充、注意力掩码、位置编号，以及吞吐随 batch 的变化。
