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
# # 4.0.5 · 显存/内存估算 (memory estimation)
#
# **学习目标**：算出一个训练步需要多少内存：参数、梯度、优化器状态、autocast 权重副本、激活值 (activations)；
# 知道"参数 × 4 字节 (fp32) 或 × 2 (fp16)"这条经验法则漏掉了什么；用测量验证估算（目标 ±10%）；找出预算内最大的 batch。
#
# **前置知识**：4.0.1–4.0.4；反向传播要保存前向的中间结果。 **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.threads import setup_threads

setup_threads();

# %%
from course_lib.config import ModelConfig, pick
from course_lib.memory import MiB, compare, estimate, find_max_batch_size
from course_lib.plotting import new_axes, print_table

cfg = ModelConfig.small()
B, T = pick(16, 4), pick(128, 64)
e = estimate(cfg, B, T, "fp32", "adamw")
print(f"model: {e.params // 4:,} parameters; batch {B} x seq {T}")
print_table([{"what": k, "MiB": v} for k, v in e.breakdown().items()])
print("rule of thumb:", {k: round(v, 2) for k, v in e.rule_of_thumb().items()})

# %% [markdown]
# ## 1. 经验法则漏掉了什么
# "参数 × 4 字节"只是**权重**。训练时还有：梯度（同样大小）、AdamW 的两个状态（2 倍）——合起来就是常说的"每个参数 16 字节"；
# 再加上**激活值**：它和 batch × 序列长度成正比，小模型 + 大 batch 时远大于权重本身。对这个 byte 级小模型，词表只有 258，
# 但 log_softmax 的输出仍是 N × V 个 fp32。
#
# 峰值不是所有项的和：反向传播时激活值一边释放、梯度一边生成。`estimate` 比较两个时刻：反向开始时（权重 + 优化器状态 + 全部激活 + loss 梯度缓冲）
# 和优化器更新时（权重 + 优化器状态 + 全部梯度），取大者。

# %% [markdown]
# ## 2. 估算 vs 实测
# `measure` 真的跑两个训练步。GPU 上用 `torch.cuda.max_memory_allocated()`；CPU 上 PyTorch 没有峰值计数器，我们用
# `torch.profiler.profile(profile_memory=True)` 记录 CPU 分配器的每次分配和释放（带符号的字节数），累加得到任意时刻的在用内存，取最大值。
# 进程 RSS 不行：它包含解释器和库，而且释放后不回落。

# %%
sizes = {"tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=256),
         "small": ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=352, max_seq_len=256),
         "medium": ModelConfig(d_model=256, n_layers=pick(6, 2), n_heads=8, n_kv_heads=8, ffn_hidden=704, max_seq_len=256)}
rows = [compare(c, B, T, dt, name=n) for n, c in sizes.items() for dt in ("fp32", "bf16")]
print_table(rows, ["model", "params", "batch", "seq", "dtype", "estimate_MiB", "measured_MiB", "error_pct", "within_10pct"])
print("all within +-10%:", all(r["within_10pct"] for r in rows))

# %%
fig, ax = new_axes("Estimated vs measured peak memory", "configuration", "peak memory (MiB)")
x = range(len(rows))
ax.bar([i - 0.2 for i in x], [r["estimate_MiB"] for r in rows], width=0.4, label="estimate")
ax.bar([i + 0.2 for i in x], [r["measured_MiB"] for r in rows], width=0.4, label="measured")
ax.set_xticks(list(x)); ax.set_xticklabels([f"{r['model']}\n{r['dtype']}" for r in rows]); ax.legend();

# %% [markdown]
# bf16 autocast 省下的没有想象中多：主权重、梯度、优化器状态仍是 fp32；RMSNorm 在 fp32 中计算；autocast 还为每个矩阵多存一份 16 位副本。
#
# ## 3. 预算内最大的 batch，和一个交互式计算器

# %%
budget = 256 * MiB
for dt in ("fp32", "bf16"):
    print(f"{dt}: largest batch (seq {T}) under 256 MiB = {find_max_batch_size(budget, cfg, T, dt)}")

# %%
try:
    import ipywidgets as w
    def calc(d_model=128, n_layers=4, batch=16, seq=128, dtype="fp32"):
        c = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_hidden=(8 * d_model // 3 + 31) // 32 * 32, max_seq_len=max(seq, 8))
        print_table([{"what": k, "MiB": v} for k, v in estimate(c, batch, seq, dtype).breakdown().items()])
    w.interact(calc, d_model=w.IntSlider(128, 32, 1024, 32), n_layers=w.IntSlider(4, 1, 24), batch=w.IntSlider(16, 1, 256),
               seq=w.IntSlider(128, 16, 2048, 16), dtype=["fp32", "bf16"])
except ImportError:
    print("ipywidgets not installed: call estimate(...) directly")

# %% [markdown]
# ## 小结
# - 静态部分：参数 + 梯度 + 优化器状态（AdamW fp32：16 字节/参数）；动态部分：激活值 ∝ batch × seq × 层数。
# - 估算要对照测量；`bench/memory_estimate.py` 打印同一张误差表。
#
# ## 练习
# 实现 `exercises/ex405_memory_estimate.py`（参数、梯度、优化器状态的字节数；共享参数只算一次，冻结参数没有梯度）：

# %%
from course_lib.grading import check
check("4.0.5");

# %% [markdown]
# ## 自检

# %%
from course_lib.quiz import quiz

# 最后一题是「预测数值」：它的答案由本课上面测得的数值决定。
q = quiz("4.0.5", measured={"max_abs_error_pct": max(abs(r["error_pct"]) for r in rows)})

# %% [markdown]
# ## 下一步
#
# - 用计算器估算你自己的模型（换成你的 `d_model`、层数和序列长度），再用 `measure` 实测一次对照。
# - 4.1.4 梯度累积和 4.1.5 混合精度会用到这里的数字：激活值随 batch 增长，bf16 让激活和权重副本减半。
# - 有 GPU 时，`measure` 会改用 CUDA 分配器的统计 (`torch.cuda.max_memory_allocated`)，同一张表可以直接对照显存。
