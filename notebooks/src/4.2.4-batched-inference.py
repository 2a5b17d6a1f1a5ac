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
# # 4.2.4 · 批量生成 (batched generation) 与流式输出 (streaming)
#
# **学习目标**
# - 把长度不同的提示放进一个 batch：左填充 (left padding)、注意力掩码 (attention mask)、由掩码推出的位置编号 (position ids)；
# - 先结束（输出 EOS）的序列不再参与计算；验证贪心批量输出 = 每个提示单独生成；
# - 测吞吐量 (tokens/s) 随 batch 从 1 到 32 的变化，画图，解释收益从哪来、在这台机器上止于哪里；
# - 单个提示的流式输出：token 一生成就打印。
#
# **前置知识**：4.2.3 的 KV 缓存。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import codecs
import time

import torch

from course_lib.config import pick, quick_mode
from course_lib.lab.demo import END, settings_line, stream_sample
from course_lib.generate import generate, left_pad
from course_lib.lab.measure import throughput_vs_batch
from course_lib.model import DIYModel, position_ids_from_mask
from course_lib.lab.plotting import new_axes, print_table
from course_lib.pretrained import load_reference_model

torch.manual_seed(0)
model, tok = load_reference_model()
print(f"reference model: {model.num_parameters() / 1e6:.1f}M params, {model.num_parameters() * 4 / 1e6:.1f} MB of fp32 weights")

# %% [markdown]
# ## 1. 左填充、掩码、位置编号
#
# 生成是在序列**末尾**追加 token，所以填充要放在左边，让每行的最后一个位置都是真实 token。
# 掩码把填充遮住；位置编号只数真实 token——否则左填充会把一个序列的位置整体后移，结果就和单独生成不同
# （HF 的 #22707、#25790 就是这类问题）。

# %%
# NBVAL_CHECK_OUTPUT
prompts = ["def ", "class Foo(object):\n    def __init__(self", "import", "    for i in range(n):\n        "]
ids, mask = left_pad([tok.encode(p) for p in prompts], tok.pad_id)
pos = position_ids_from_mask(mask, mask.shape[1])
print("shape", tuple(ids.shape))
print("mask row 0:", mask[0, -8:].tolist(), "| positions row 0:", pos[0, -8:].tolist())
print("mask row 2:", mask[2, -8:].tolist(), "| positions row 2:", pos[2, -8:].tolist())

# %% [markdown]
# ## 2. 批量输出 = 单独输出
#
# `generate` 每步检查哪些行输出了 EOS：这些行之后只得到 `<pad>`，并且被移出正在运行的 batch（也从 KV 缓存里移除，`cache.reorder`），
# 不再消耗计算。

# %%
N = pick(60, 20)
batch = generate(model, ids, N, attention_mask=mask, eos_id=tok.eos_id, pad_id=tok.pad_id)
for i, p in enumerate(prompts):
    alone = generate(model, torch.tensor([tok.encode(p)]), N, eos_id=tok.eos_id, pad_id=tok.pad_id)
    same = batch[i, :alone.shape[1]].tolist() == alone[0].tolist()
    print(f"row {i}: same as alone = {same} | {tok.decode(alone[0].tolist())[:50]!r}")

# %% [markdown]
# ## 3. 吞吐量随 batch 变化
#
# decode 每步对整个 batch 做一次前向。batch 为 1 时，每步的时间花在固定开销上（Python、算子调度、读一遍权重）；
# batch 变大时这些开销被分摊，矩阵乘法也更饱满，所以每秒生成的 token 数上升（下表的 `vs_batch1`）。当计算本身成为瓶颈
# （CPU 核数用满），每步时间随 batch 明显变长（`ms_per_step`），吞吐的增长就慢下来：batch 大了以后，`vs_batch1` 明显低于 batch 本身。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.2.4", "batch8_speedup")

# %%
sizes = pick([1, 2, 4, 8, 16, 32], [1, 4, 8])
rows = throughput_vs_batch(model, sizes, prompt_len=32, new_tokens=pick(32, 4), repeats=pick(2, 1))
print_table(rows)

# %%
import matplotlib.pyplot as plt

fig, (a1, a2) = new_axes("Batched decode on CPU", "batch size", "generated tokens/s", ncols=2)
a1.plot(sizes, [r["decode_tok_s"] for r in rows], "o-", label="throughput")
a1.plot(sizes, [rows[0]["decode_tok_s"] * b for b in sizes], "--", alpha=0.5, label="ideal (linear)")
a1.set_xscale("log", base=2); a1.set_yscale("log"); a1.set_title("Throughput"); a1.legend()
a2.plot(sizes, [r["ms_per_step"] for r in rows], "s-", color="tab:red")
a2.set_xscale("log", base=2); a2.set_title("Latency per decode step"); a2.set_xlabel("batch size"); a2.set_ylabel("ms per step")
plt.tight_layout(); plt.show()

# %%
best = max(rows, key=lambda r: r["decode_tok_s"])
b8 = next((r for r in rows if r["batch_size"] == 8), None)
if b8:
    print(f"batch 8 vs batch 1: {b8['vs_batch1']:.1f}x throughput (bench target >= 4x)")
print(f"best: batch {best['batch_size']} at {best['decode_tok_s']:.0f} tok/s; "
      f"step latency grows from {rows[0]['ms_per_step']:.1f} ms to {rows[-1]['ms_per_step']:.1f} ms")
if not quick_mode():   # the directions the text states (quick mode's few tokens are too noisy to tell)
    assert rows[-1]["decode_tok_s"] > rows[0]["decode_tok_s"], rows
    assert rows[-1]["ms_per_step"] > rows[0]["ms_per_step"], rows

# %%
p.reveal(b8["vs_batch1"])

# %% [markdown]
# 代价是**延迟**：大 batch 的每一步比 batch 1 慢（上面打印了 batch 1 和最大 batch 的每步时间，并断言它变长了），每个用户等每个 token 的时间更长。服务端在吞吐与延迟之间取舍；
# 4.2.3 的分页缓存让同样的内存容纳更多并发序列，是把 batch 做大的前提。

# %% [markdown]
# ## 3b. 吞吐的增长在哪里放慢：22M 参数的模型
#
# 参考模型很小（开头打印了参数量和权重大小），权重比本机的末级缓存还小（4.0.6 第 3 节打印了缓存的大小），batch 1 的一步有相当一部分是固定开销 (overhead)。
# 换成 `speed_config()`（随机初始化的 d512 × 8 层，约 2230 万参数，fp32 权重 89 MB）：batch 1 时每一步都要把 89 MB 权重
# 从内存读一遍，一步的时间由**内存带宽**决定 (memory-bandwidth-bound，4.0.6 的 roofline 量过同一个模型)；batch 变大时，同一次读权重服务更多 token，
# 每步时间涨得比 batch 慢得多，吞吐随 batch 上升。当每步的矩阵乘法算量大到 CPU 算不过来（计算受限，compute-bound），
# 每步时间开始随 batch 变长，吞吐的增长就放慢，向一个上限靠拢——上限大约就是 prefill 的吞吐（prefill 一次处理很多 token，本来就是计算受限）。
# 下表同时列出 prefill 吞吐作为这个上限；线程数也打印出来，因为上限随核数变化。快速模式下用小配置，只检查代码能跑。

# %%
from course_lib.lab.measure import speed_config

big_cfg = speed_config()
big_sizes = pick([1, 2, 4, 8, 16, 32, 64], [1, 4, 16])
big_rows = throughput_vs_batch(big_cfg, big_sizes, prompt_len=32, new_tokens=pick(16, 4), repeats=pick(2, 1))
n_big = DIYModel(big_cfg).num_parameters()
print(f"speed model: d{big_cfg.d_model} x {big_cfg.n_layers} layers, {n_big / 1e6:.1f}M params, "
      f"{n_big * 4 / 1e6:.0f} MB of fp32 weights; torch threads: {torch.get_num_threads()}")
print_table(big_rows)
ceiling = max(r["prefill_tok_s"] for r in big_rows)
last = big_rows[-1]
print(f"batch {last['batch_size']}: {last['vs_batch1']:.1f}x batch 1 "
      f"(linear would be {last['batch_size']}x); decode {last['decode_tok_s']:.0f} tok/s vs prefill ceiling {ceiling:.0f} tok/s")
# the direction the text states: throughput grows with batch, less than linearly, and stays under the compute ceiling
assert big_rows[-1]["decode_tok_s"] > big_rows[0]["decode_tok_s"], "batching should raise throughput"
assert last["vs_batch1"] < last["batch_size"], "throughput should grow less than linearly"
assert last["decode_tok_s"] < 1.25 * ceiling, "decode throughput should stay under the prefill (compute-bound) rate"
knee = next((r for r in big_rows if r["ms_per_step"] >= 1.5 * big_rows[0]["ms_per_step"]), None)
if knee:
    print(f"on this machine the step time stays within 1.5x of batch 1's {big_rows[0]['ms_per_step']:.1f} ms until "
          f"batch {knee['batch_size']} ({knee['ms_per_step']:.1f} ms): from there throughput rises more slowly, towards the prefill ceiling")
else:
    print(f"the step time stayed within 1.5x of batch 1's up to batch {last['batch_size']}: not saturated yet on this machine")

# %% [markdown]
# 最后一行指出了这台机器上每一步的时间从哪个 batch 开始明显变长（超过 batch 1 的 1.5 倍）：在那之前，一次读权重服务更多 token，
# 每步时间涨得比 batch 慢，吞吐上升得快；从那里开始矩阵乘法的算量成为瓶颈，吞吐向 prefill 的上限靠拢（单元格断言了 decode 吞吐低于 prefill 上限的 1.25 倍、增长慢于线性）。
# 核数更多或换成 GPU，算力上限更高，这个拐点应当往后推（这里测不了）。

# %% [markdown]
# ## 4. 流式输出
#
# 用户不想等整段生成完。`stream_generate` 每解码出一段完整的文本就 `yield` 出来。下面用参考模型流式生成一段代码，
# 采样设置是人实际会用的：温度 (temperature) 0.8、top-k 40、固定种子 (seed)，遇到空行（两个换行）或 EOS 停止
# （`course_lib.lab.demo.stream_sample` 包装了 `stream_generate`）。在运行中的 kernel 里，文字是一段一段出现的。

# %%
# DEMO_TEXT
prompt = "def fibonacci(n):\n"
t0 = time.perf_counter()
first, n_pieces = None, 0
print(settings_line(seed=0))
print(prompt, end="")
for piece in stream_sample(model, tok, prompt, pick(160, 80), seed=0):
    if first is None:
        first = time.perf_counter() - t0
    n_pieces += 1
    print(piece, end="", flush=True)
print("\n" + END)
print(f"[{n_pieces} pieces; time to first piece: {first * 1000:.0f} ms, total {time.perf_counter() - t0:.2f} s]")

# %% [markdown]
# ### 一个汉字 = 3 个字节 token
#
# 字节级分词器 (byte-level tokenizer) 把一个汉字编码成 3 个 UTF-8 字节，也就是 3 个 token。逐个 token 解码时，前两个字节
# 还不是完整的字符，直接 `bytes([t]).decode()` 会报错或输出乱码 `�`。`stream_generate` 用的是增量解码器
# (incremental decoder, `codecs.getincrementaldecoder("utf-8")`)：它把不完整的字节留住，第 3 个字节到了才吐出整个汉字。
# 下面把一行中文注释的 token 逐个喂给同一种解码器，看每个 token 输出了什么：

# %%
# NBVAL_CHECK_OUTPUT
text = "# 求和\n"
ids = tok.encode(text)
dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
pieces = [dec.decode(bytes([t])) for t in ids]
print_table([{"token": t, "byte": f"0x{t:02x}", "piece yielded": repr(p)} for t, p in zip(ids, pieces, strict=True)])
print(f"{len(text)} characters -> {len(ids)} byte tokens; pieces yielded: {sum(1 for p in pieces if p)}")
assert pieces[2:5] == ["", "", "求"] and pieces[5:8] == ["", "", "和"], pieces
assert "".join(pieces) == text

# %% [markdown]
# ## 小结
#
# - 批量生成 = 左填充 + 掩码 + 由掩码推出的位置编号；结束的行移出 batch。正确性标准：与逐个生成完全相同（`tests/unit/test_batched_generation.py`）。
# - 吞吐随 batch 上升，越接近算力上限涨得越慢；代价是每步延迟变长。
# - 流式输出改善的是「首个片段的等待时间」（第 4 节打印了首个片段和全部完成各用多久）；生成的 token 和算法都没变。
#
# ## 练习
#
# 1. `exercises/ex424_left_pad.py`：左填充、掩码与位置编号（热身）。
# 2. `exercises/ex424_batched_generate.py`：完整的批量贪心生成：左填充、attention mask、由掩码得到的
#    position ids、KV 缓存、EOS（结束的行不再变化，其他行继续）。评分器把每个提示 **单独** 生成，
#    要求批量结果逐 token 相同，`pad_id` 换成别的值也一样。
#
# 卡住时运行 `hint("ex424_batched_generate")`，每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("ex424_batched_generate") when stuck
result = check("4.2.4")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.4")   # 预测题在第 3 节的测量之前已经问过

# %% [markdown]
# ## 下一步
#
# 回到 4.2.2：把量化模型和 KV 缓存、批量生成组合起来，自己量一量哪种组合在你的机器上吞吐最高。
