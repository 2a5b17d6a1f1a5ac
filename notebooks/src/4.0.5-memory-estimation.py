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
# 知道"参数 × 4 字节 (fp32) 或 × 2 (fp16)"这条经验法则漏掉了什么；用测量验证估算（目标 ±10%）；
# 用激活检查点 (activation checkpointing) 拿计算换内存，并测出它的代价；找出预算内最大的 batch。
#
# **前置知识**：4.0.1–4.0.4；反向传播要保存前向的中间结果。 **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
from course_lib.config import ModelConfig, pick
from course_lib.memory import MiB, compare, estimate, find_max_batch_size
from course_lib.lab.plotting import new_axes, print_table

cfg = ModelConfig.small()
B, T = pick(16, 4), pick(128, 64)
e = estimate(cfg, B, T, "fp32", "adamw")
print(f"model: {e.params // 4:,} parameters; batch {B} x seq {T}")
print_table([{"what": k, "MiB": v} for k, v in e.breakdown().items()])
print("rule of thumb:", {k: round(v, 2) for k, v in e.rule_of_thumb().items()})
parts = e.params + e.grads + e.optimizer_state + e.autocast_copies + e.activations + e.loss_buffers + e.buffers
print(f"activations / weights = {e.activations / e.params:.1f}x; peak {e.peak / MiB:.1f} MiB < sum of all parts "
      f"{parts / MiB:.1f} MiB (phase: {e.peak_phase})")
assert e.activations > e.params and e.peak < parts

# %% [markdown]
# ## 1. 经验法则漏掉了什么
# "参数 × 4 字节"只是**权重**。训练时还有：梯度（同样大小）、AdamW 的两个状态（2 倍）——合起来就是常说的"每个参数 16 字节"；
# 再加上**激活值**：它和 batch × 序列长度成正比，小模型 + 大 batch 时比权重本身大得多（上面一行打印了这个倍数，并断言激活值大于权重）。
# 对这个 byte 级小模型，词表只有 258，但 log_softmax 的输出仍是 N × V 个 fp32。
#
# 峰值不是所有项的和：反向传播时激活值一边释放、梯度一边生成。`estimate` 比较两个时刻：反向开始时（权重 + 优化器状态 + 全部激活 + loss 梯度缓冲）
# 和优化器更新时（权重 + 优化器状态 + 全部梯度），取大者。

# %% [markdown]
# ## 2. 估算 vs 实测
# `measure_peak` 真的跑两个训练步。GPU 上用 `torch.cuda.max_memory_allocated()`；CPU 上 PyTorch 没有峰值计数器，我们用
# `torch.profiler.profile(profile_memory=True)` 记录 CPU 分配器的每次分配和释放（带符号的字节数），累加得到任意时刻的在用内存，取最大值。
# 进程 RSS 不适合：它还包含解释器和各个库，释放的内存也不一定还给操作系统。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；第 3 节的表之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.0.5", "max_abs_error_pct")

# %%
sizes = {"tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=256),
         "small": ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=352, max_seq_len=256),
         "medium": ModelConfig(d_model=256, n_layers=pick(6, 2), n_heads=8, n_kv_heads=8, ffn_hidden=704, max_seq_len=256)}
rows = [compare(c, B, T, dt, name=n) for n, c in sizes.items() for dt in ("fp32", "bf16")]
print_table(rows, ["model", "params", "batch", "seq", "dtype", "estimate_MiB", "measured_MiB", "error_pct", "within_10pct"])
print("all within +-10%:", all(r["within_10pct"] for r in rows))
assert all(r["within_10pct"] for r in rows), [(r["model"], r["dtype"], round(r["error_pct"], 1)) for r in rows]

# %%
fig, ax = new_axes("Estimated vs measured peak memory", "configuration", "peak memory (MiB)")
x = range(len(rows))
ax.bar([i - 0.2 for i in x], [r["estimate_MiB"] for r in rows], width=0.4, label="estimate")
ax.bar([i + 0.2 for i in x], [r["measured_MiB"] for r in rows], width=0.4, label="measured")
ax.set_xticks(list(x)); ax.set_xticklabels([f"{r['model']}\n{r['dtype']}" for r in rows]); ax.legend();

# %% [markdown]
# bf16 autocast 省下的没有"字节减半"想象的那么多：主权重、梯度、优化器状态仍是 fp32；RMSNorm 在 fp32 中计算；
# autocast 还为每个矩阵多存一份 16 位副本。下面一行由上表的实测值算出，并断言 bf16 的峰值在 fp32 的一半到一倍之间。

# %%
by = {(r["model"], r["dtype"]): r["measured_MiB"] for r in rows}
bf16_ratio = {n: by[(n, "bf16")] / by[(n, "fp32")] for n in sizes}
print("measured peak bf16 / fp32:", {n: round(v, 2) for n, v in bf16_ratio.items()})
assert all(0.5 < v < 1.0 for v in bf16_ratio.values()), bf16_ratio

# %% [markdown]
# ## 3. 激活检查点 (activation checkpointing)：用计算换内存
#
# 上表里激活值是峰值的大头。**激活检查点**的做法：前向时每个 transformer 块 (block) 只保留它的**输入**，块内部的中间结果用完就丢；
# 反向传播走到这个块时，先用保存的输入把这个块的前向**再算一遍**，得到中间结果，再做这一块的反向。于是：
#
# - **内存**：激活值从"每块的全部中间结果"降到"每块一个输入 (N × d 个 fp32)"，外加反向时**正在重算的那一块**的全部中间结果；
# - **计算**：每个块多一次前向。一步训练里前向约占 1/3、反向约占 2/3（反向要对输入和权重各求一次梯度），所以理想情况下多出约 **33%** 的计算；
# - **结果**：重算的是同样的运算、同样的输入，梯度不变（下面在 CPU 上逐位比较）。
#
# `course_lib` 里是 `model.set_activation_checkpointing(True)`：训练时对每个块调用
# `torch.utils.checkpoint.checkpoint(block, ..., use_reentrant=False)`（PyTorch 推荐的非重入实现）；`eval()`、`torch.no_grad()` 和带 KV cache 的生成不受影响，
# 参数、state dict 和导出的配置都不变。训练命令里对应 `python -m course_lib.train --activation-checkpointing`。
# 这就是 torchtitan 的 `--activation_checkpoint.mode full`（按块全部重算）；它还有 `selective` 模式，只重算一部分块或一部分算子，在内存和计算之间取中间。
#
# `estimate(..., activation_checkpointing=True)` 由同一张激活值清单推出：保留的是 L 个块输入 + 块外的张量（最后的 RMSNorm、RoPE、log_softmax）；
# 反向重算某一块时，还有这一块的全部激活、MLP 反向的梯度缓冲，以及已经生成的梯度（公式写在 `course_lib/memory.py` 的 `_checkpointed_phases`）。

# %%
import torch

from course_lib.lab.measure import interleaved_rounds, ratio_stats
from course_lib.memory import step_timer
from course_lib.model import DIYModel

# 1) gradients with and without checkpointing: compared bit for bit
torch.manual_seed(0)
xg = torch.randint(0, 256, (4, 64))
grads = {}
for ac in (False, True):
    torch.manual_seed(0)
    m = DIYModel(sizes["small"]).set_activation_checkpointing(ac)
    m(xg, targets=xg).loss.backward()
    grads[ac] = [p.grad for p in m.parameters()]
identical = all(torch.equal(a, b) for a, b in zip(grads[False], grads[True], strict=True))
print("gradients bitwise identical with and without activation checkpointing:", identical)
assert identical

# 2) estimated vs measured peak, with and without, for the three sizes (a batch where activations matter)
B_AC, T_AC = pick(16, 8), pick(128, 64)
ac_rows = [compare(c, B_AC, T_AC, "fp32", name=n, activation_checkpointing=ac) for n, c in sizes.items() for ac in (False, True)]
print_table(ac_rows, ["model", "batch", "seq", "ac", "estimate_MiB", "measured_MiB", "error_pct", "within_10pct"])
assert all(r["within_10pct"] for r in ac_rows), [(r["model"], r["ac"], round(r["error_pct"], 1)) for r in ac_rows]
peak = {(r["model"], r["ac"]): r["measured_MiB"] for r in ac_rows}
assert all(peak[(n, True)] < 0.9 * peak[(n, False)] for n in sizes), peak

# %%
p.reveal(max(abs(r["error_pct"]) for r in rows + ac_rows))

# %% [markdown]
# 步时 (step time) 用**交替轮次**测（为什么要这样测，4.0.6 第 1 节专门讲）：开 / 不开各先热身一次，然后一轮里各跑一次，
# 共若干轮；每一轮算一个比值（开 / 不开），报告中位数和范围。计时时把 torch 线程数固定为 1。

# %%
threads_before = torch.get_num_threads()
torch.set_num_threads(1)   # pinned for the timing: the ratio is about recompute, not thread scaling
try:
    rounds, steps = pick(5, 3), 2
    time_rows = []
    for n, c in sizes.items():
        timers = {ac: step_timer(c, B_AC, T_AC, activation_checkpointing=ac, steps=steps) for ac in (False, True)}
        for t in timers.values():
            t()                                        # warm-up, not timed
        res = interleaved_rounds({"off": timers[False], "on": timers[True]}, rounds=rounds)
        r = ratio_stats([a / b for a, b in zip(res["on"]["values"], res["off"]["values"], strict=True)])
        time_rows.append({"model": n, "peak off MiB": peak[(n, False)], "peak on MiB": peak[(n, True)],
                          "peak on/off": peak[(n, True)] / peak[(n, False)], "s/step off": res["off"]["median"],
                          "step time on/off (median)": r["median"], "range": f"{r['min']:.2f}-{r['max']:.2f}"})
finally:
    torch.set_num_threads(threads_before)
print(f"torch threads during timing: 1; {rounds} interleaved rounds of {steps} step(s) each")
print_table(time_rows)
slowdown = [row["step time on/off (median)"] for row in time_rows]
print(f"activation checkpointing: peak x{min(r['peak on/off'] for r in time_rows):.2f}-{max(r['peak on/off'] for r in time_rows):.2f}, "
      f"step time x{min(slowdown):.2f}-{max(slowdown):.2f} (median per size)")
assert all(s > 1.0 for s in slowdown), slowdown

# %% [markdown]
# 读表：开启后每个尺寸的峰值都下降了至少 10%（上面断言了，估算也都在 ±10% 内），每步都变慢（断言了每个尺寸的中位数比值大于 1）；
# 慢多少看打印的比值，理想值约 1.33，实际还受重算时的内存分配和这台机器当时的负载影响，范围一栏就是这种波动。
# 省下的只是激活值那一部分：激活值占峰值越多，"peak on/off" 越小——第 4 节的图里，batch 越大，两条估算曲线分得越开；
# 峰值被参数、梯度和优化器状态主导时，它省不了多少，那部分要靠分片（FSDP）或更低精度的优化器状态。
# 它和梯度累积 (4.1.4) 是两种让激活值装得下的办法：梯度累积把 batch 切成几个小批次、总计算不变，但每个小批次更小、机器可能用不满；
# 激活检查点保持批次大小，多付约一次前向的计算。哪个更快要在你的机器上量。
#
# ## 4. 预算内最大的 batch，和一个交互式计算器

# %%
budget = 256 * MiB
batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
fig, ax = new_axes(f"Estimated peak vs batch (seq {T})", "batch size", "peak memory (MiB)")
for ac, style in ((False, "-o"), (True, "--o")):
    ax.plot(batches, [estimate(cfg, b, T, activation_checkpointing=ac).peak / MiB for b in batches], style,
            label="activation checkpointing" if ac else "plain")
ax.axhline(budget / MiB, color="gray", lw=0.8, label="256 MiB budget"); ax.set_xscale("log", base=2); ax.legend();

# %%
for dt in ("fp32", "bf16"):
    print(f"{dt}: largest batch (seq {T}) under 256 MiB = {find_max_batch_size(budget, cfg, T, dt)}"
          f" | with activation checkpointing = {find_max_batch_size(budget, cfg, T, dt, activation_checkpointing=True)}")

# %%
try:
    import ipywidgets as w
    def calc(d_model=128, n_layers=4, batch=16, seq=128, dtype="fp32", activation_checkpointing=False):
        c = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_hidden=(8 * d_model // 3 + 31) // 32 * 32, max_seq_len=max(seq, 8))
        est = estimate(c, batch, seq, dtype, activation_checkpointing=activation_checkpointing)
        print_table([{"what": k, "MiB": v} for k, v in est.breakdown().items()])
        print("peak phase:", est.peak_phase)
    w.interact(calc, d_model=w.IntSlider(128, 32, 1024, 32), n_layers=w.IntSlider(4, 1, 24), batch=w.IntSlider(16, 1, 256),
               seq=w.IntSlider(128, 16, 2048, 16), dtype=["fp32", "bf16"], activation_checkpointing=False)
except ImportError:
    print("ipywidgets not installed: call estimate(...) directly")

# %% [markdown]
# ## 小结
# - 静态部分：参数 + 梯度 + 优化器状态（AdamW fp32：16 字节/参数）；动态部分：激活值 ∝ batch × seq × 层数。
# - 激活检查点：每块只留输入、反向时重算，峰值下降、梯度逐位不变，每步多约一次前向的计算（本课测得的比值见上表）。
# - 估算要对照测量；`bench/memory_estimate.py` 打印同一张误差表。
#
# ## 练习
# 实现 `exercises/ex405_memory_estimate.py`（参数、梯度、优化器状态的字节数；共享参数只算一次，冻结参数没有梯度）：

# %%
from course_lib.lab.grading import check
check("4.0.5");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.5")   # 预测题在第 2 节的测量之前已经问过

# %% [markdown]
# ## 下一步
#
# - 用计算器估算你自己的模型（换成你的 `d_model`、层数和序列长度），再用 `measure_peak` 实测一次对照。
# - 4.1.4 梯度累积和 4.1.5 混合精度会用到这里的数字：激活值随 batch 增长；bf16 autocast 让一部分激活变成 16 位，但要多存一份 16 位权重副本（第 2 节测得峰值只降到 fp32 的约 0.77）。
# - 有 GPU 时，给 `measure_peak` / `compare` 传 `device="cuda"`，它们改用 CUDA 分配器的统计 (`torch.cuda.max_memory_allocated`)，同一张表可以直接对照显存。
