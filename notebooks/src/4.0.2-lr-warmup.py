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
# # 4.0.2 · 学习率预热 (learning-rate warmup)
#
# **学习目标**：写出 warmup + 线性/余弦衰减 (linear / cosine decay) 与 WSD (warmup-stable-decay) 调度；知道 HF 的约定（第一步 lr = 0）和 nanoGPT 的不同；
# 在一个「学习率 × warmup × 随机种子」的网格里看到：没有 warmup 时，学习率一大，最初几步 loss 就冲高；warmup 拓宽了能平稳起步的学习率范围。
#
# **前置知识**：4.0.1；AdamW。 **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%

import numpy as np

from course_lib.config import ModelConfig, pick
from course_lib.lab.experiments import lr_warmup_grid
from course_lib.lab.plotting import new_axes, print_table
from course_lib.lab.progress_bars import live_bar
from course_lib.lab.quiz import predict
from course_lib.schedule import lr_multiplier, schedule_values

# %% [markdown]
# ## 1. 四种调度，一张静态图
#
# `course_lib.schedule.lr_multiplier(step, kind=..., warmup_steps=..., total_steps=...)` 返回第 `step` 个优化器步（从 0 开始）的学习率倍数。

# %%
TOTAL, WARM, PEAK = 200, 20, 3e-3
fig, ax = new_axes("LR schedules (warmup 20, total 200)", "optimizer step", "learning rate")
for kind in ("constant", "linear", "cosine", "wsd"):
    ax.plot(schedule_values(kind, PEAK, WARM, TOTAL, min_lr=3e-4 if kind in ("cosine", "wsd") else 0.0), label=kind)
ax.legend();

# %% [markdown]
# **两种 warmup 约定**：HF `get_*_schedule_with_warmup` 在第 `s` 步用 `s / warmup`，所以**第 0 步 lr = 0**（这一步只更新了 Adam 的矩估计，权重没动）；
# Karpathy 的 build-nanogpt 用 `(s + 1) / warmup`，第 0 步就是 `1/warmup`，不浪费一步（`hf_convention=False` 就是这个形式）；
# nanoGPT 的 `train.py` 又稍有不同：`(it + 1) / (warmup_iters + 1)`，第 0 步是 `1/(warmup+1)`，warmup 期间每一步都比 build-nanogpt 的小一截（下表：第 3 步 0.8 对 1.0）。
# 三种写法只差一两步，但读别人的代码时要知道自己用的是哪一种。本课的 `course_lib` 默认 HF 约定（`hf_convention=True`），
# 这样和 `transformers` 的数值逐一相同（`tests/unit/test_schedule.py` 以 transformers 为参照 oracle 检查）。

# %%
# NBVAL_CHECK_OUTPUT
for s in range(4):
    print(s, "HF:", round(lr_multiplier(s, kind="linear", warmup_steps=4, total_steps=10), 4),
          "build-nanogpt:", round(lr_multiplier(s, kind="linear", warmup_steps=4, total_steps=10, hf_convention=False), 4),
          "nanoGPT train.py:", round((s + 1) / (4 + 1), 4))

# %% [markdown]
# ## 2. 实验：warmup 让多大的学习率还能平稳起步？
#
# 只比较一两个设置、一个种子，看到的往往是噪声。这里跑一个网格 (grid)：峰值学习率 × warmup 步数 × 3 个随机种子。
# 为了让「没有 warmup」真的出问题，设置选得对它不利、但都是常见取值：Adam 的 β₂ = 0.999（不少教程的默认值；本课程其他地方用 0.95），
# 一个深而窄的模型（8 层、d_model 64），不裁剪梯度。每个单元格的运行**一样长**（同样的步数、同样衰减到 lr/10），
# 同一个种子的模型初始化和**数据顺序完全相同**（都由 `TrainConfig.seed` 决定），所以两个单元格只差在学习率和 warmup 上。
#
# 每个运行记两个数：
# - **尖峰 (loss spike)**：整个运行中 loss 最多比第 1 步的 loss 高出多少（0 = 从没升高过；只看前几步会漏掉 warmup 结束、lr 到顶时才出现的尖峰）。
#   均匀乱猜 258 种 token 的 loss 是 ln 258 ≈ 5.55，随机初始化的模型第 1 步就在它附近（第 2 节曲线图的起点），
#   升到它之上，说明更新把模型推得比随机猜还差；
# - **末期 loss**：最后 10 步训练 loss 的平均。
#
# `course_lib.lab.experiments.lr_warmup_grid` 跑整个网格（进度条从第一秒起就在走，每个单元格跑完在它上方打印一行）。
#
# **先预测**：在运行网格之前，凭上面的设置猜一猜下面这个数。选一个（点选后按「记下预测」，或 `p.guess("B")`），
# 网格跑完后 `p.reveal(...)` 会告诉你猜得对不对。

# %%
p = predict("4.0.2", "spike_no_warmup_top")

# %%
LRS = pick((0.01, 0.03, 0.1, 0.3), (0.01, 0.3))
WARMUPS = pick((0, 10, 40), (0, 20))
SEEDS = pick((0, 1, 2), (0, 1))
STEPS = pick(80, 40)
grid_model = ModelConfig(d_model=64, n_layers=8, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=128)
print(f"{len(LRS)} lr x {len(WARMUPS)} warmup x {len(SEEDS)} seeds = {len(LRS) * len(WARMUPS) * len(SEEDS)} runs "
      f"of {STEPS} steps; model {grid_model.n_layers} layers x d_model {grid_model.d_model}")
summary = []

with live_bar(total=len(LRS) * len(WARMUPS), desc="grid cells") as bar:
    def report(cell):
        summary.append(cell)
        bar.write(f"lr {cell['lr']:<5g} warmup {cell['warmup']:>2}: loss spike {cell['spike (mean)']:+.2f} nats, "
                  f"final loss {cell['final loss (mean)']:.3f} (mean of {len(SEEDS)} seeds)")
        bar.update(1)

    curves = lr_warmup_grid(grid_model, LRS, WARMUPS, SEEDS, STEPS, name="4.0.2/grid", on_cell=report,
                            betas=(0.9, 0.999), grad_clip=0.0, batch_size=16, seq_len=64)

# %%
def grid_of(key):
    return np.array([[next(c[key] for c in summary if c["lr"] == lr and c["warmup"] == w) for lr in LRS]
                     for w in WARMUPS])

fig, (ax, ax2) = new_axes(f"lr x warmup grid, mean of {len(SEEDS)} seeds", "peak learning rate", "warmup steps",
                          ncols=2, figsize=(12, 4), layout="constrained")
ax.set_title("Loss spike (max loss minus step-1 loss, nats)")
for a, key, cmap in ((ax, "spike (mean)", "Reds"), (ax2, "final loss (mean)", "Blues")):
    m = grid_of(key)
    a.imshow(np.where(np.isfinite(m), m, np.nan), cmap=cmap, aspect="auto")
    a.set_xticks(range(len(LRS)), [f"{lr:g}" for lr in LRS]); a.set_yticks(range(len(WARMUPS)), WARMUPS)
    a.set_xlabel("peak learning rate"); a.set_ylabel("warmup steps"); a.grid(False)
    for i in range(len(WARMUPS)):
        for j in range(len(LRS)):
            a.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                   color="white" if m[i, j] > np.nanmean(m[np.isfinite(m)]) else "black")
ax2.set_title(f"Final loss (mean of the last 10 of {STEPS} steps)");

fig, axes = new_axes("Loss curves: mean over seeds, band = min..max", "optimizer step", "training loss (nats/token)",
                     ncols=2, figsize=(12, 4), layout="constrained")
for a, lr in zip(axes, LRS[-2:], strict=True):
    for k, w in enumerate(WARMUPS):
        runs = np.array(curves[(lr, w)])
        steps = np.arange(1, STEPS + 1)
        a.plot(steps, runs.mean(0), color=f"C{k}", label=f"warmup {w}")
        a.fill_between(steps, runs.min(0), runs.max(0), color=f"C{k}", alpha=0.2)
    a.set_title(f"peak lr {lr:g}"); a.set_xlabel("optimizer step"); a.legend()

# %%
def spike_of(lr, w):
    return next(c["spike (mean)"] for c in summary if c["lr"] == lr and c["warmup"] == w)

STABLE = 1.0   # nats: a rise above the step-1 loss smaller than this counts as a stable start
top, longest = LRS[-1], WARMUPS[-1]
stable = {w: [lr for lr in LRS if spike_of(lr, w) < STABLE] for w in WARMUPS}
print_table([{"warmup": w, "stable learning rates (spike < 1 nat)": ", ".join(f"{lr:g}" for lr in stable[w]) or "none",
              f"spike at lr {top:g}": spike_of(top, w)} for w in WARMUPS])
finals = grid_of("final loss (mean)")
gap = float(np.max(np.abs(finals[-1] - finals[0])))
print(f"at lr {top:g}: no warmup rises {spike_of(top, 0):+.2f} nats above its step-1 loss, warmup {longest} {spike_of(top, longest):+.2f}; "
      f"largest stable lr: {max(stable[0], default=0):g} without warmup, {max(stable[longest], default=0):g} with warmup {longest}; "
      f"final losses (warmup {longest} vs none) differ by at most {gap:.2f} nats")
# the direction the prose below states, checked on this run (full and quick mode)
assert spike_of(top, 0) > 2 * STABLE and spike_of(top, longest) < STABLE, (spike_of(top, 0), spike_of(top, longest))
assert all(spike_of(lr, longest) <= spike_of(lr, 0) + 0.1 for lr in LRS), summary
assert max(stable[longest]) > max(stable[0], default=0), stable
assert gap < spike_of(top, 0), (gap, spike_of(top, 0))
assert all(spike_of(LRS[0], w) < STABLE for w in WARMUPS), summary   # small lr: warmup makes no difference

# %%
p.reveal(spike_of(top, 0))

# %% [markdown]
# **读图**：没有 warmup 时，学习率一大，loss 在最初几步就冲到随机猜测之上（左图第一行越往右越红）；同样的学习率配上足够长的 warmup，
# loss 几乎不再升高。把「整个运行中 loss 比第 1 步升高不到 1 nat」算作平稳起步，上表列出每种 warmup 下平稳的学习率：
# **warmup 拓宽了能平稳起步的学习率范围**。上面的断言在这次运行里检查了这个方向（完整模式和快速模式都检查）。
#
# **为什么**：Adam 的更新是 `m̂ / (√v̂ + ε)`。第 1 步时 m̂ = g、v̂ = g²，更新正好是 `lr · sign(g)`——**每一个**参数都移动整整一个 lr，
# 不管它的梯度有多小。权重初始化的标准差只有 0.02，lr = 0.3 的一步就把它们推得面目全非。之后几步里，二阶矩估计 v̂
# 只平均了寥寥几个批次（β₂ = 0.999 时它本该平均约 1000 步），既不可靠，又跟不上梯度的变化：梯度一变大，v̂ 还停在小值，
# 更新 m̂/√v̂ 就被放大。warmup 让 lr 在这些步里很小，等 v̂ 攒够了样本、变得可靠，再用满学习率。
#
# **末期 loss**：这么短的运行里，被尖峰打乱的模型又爬回来了，各单元格末期 loss 的差别比尖峰小得多（右图）。
# 这里的小模型能恢复；大模型训练的报告里常见的是恢复不了：一次尖峰把训练推到再也回不来的地方（发散 (divergence)），
# 所以大模型训练几乎都用 warmup（本课没有大模型可测，这一句是经验，不是本页的测量）。
# 学习率偏小（表的左边）时，有没有 warmup 几乎没有差别：warmup 是为「偏大的学习率」准备的。

# %% [markdown]
# ## 3. 交互式调度浏览器 (schedule explorer)
# 实验跑完了，现在可以随意拖动滑块（需要运行中的 kernel；存储的 notebook 里只能看到上面的静态图）。

# %%
try:
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def explore(peak_lr=3e-3, warmup=20, total=200, kind="cosine", min_lr_frac=0.1):
        fig, ax = new_axes(f"{kind}: warmup {warmup}, total {total}", "optimizer step", "learning rate")
        ax.plot(schedule_values(kind, peak_lr, min(warmup, total), total, min_lr=peak_lr * min_lr_frac))
        plt.show()

    # readout ".0e": the slider reads 3e-3, not 0.00316
    w.interact(explore, peak_lr=w.FloatLogSlider(value=3e-3, base=10, min=-5, max=-1, step=0.1, readout_format=".0e"),
               warmup=w.IntSlider(20, 0, 500), total=w.IntSlider(200, 10, 2000),
               kind=["constant", "linear", "cosine", "wsd"], min_lr_frac=w.FloatSlider(value=0.1, min=0, max=1, step=0.05))
except ImportError:
    print("ipywidgets not installed: use the static plot above")

# %% [markdown]
# ## 小结
# - warmup 让 Adam 的统计量先稳定，再用大学习率；衰减（cosine / linear / WSD）让末期收敛。
# - 网格实验：没有 warmup 时学习率一大，最初几步 loss 就冲到随机猜测之上；warmup 拓宽了能平稳起步的学习率范围。原因是 Adam 最初几步的二阶矩估计不可靠。
# - HF 约定第 0 步 lr = 0；build-nanogpt 从 1/warmup 开始，nanoGPT 的 train.py 从 1/(warmup+1) 开始。写调度器时先说明你实现的是哪一个。
#
# ## 练习
# 实现 `exercises/ex402_lr_schedule.py` 的 `lr_at`（warmup + cosine，带下限 min_lr），评分与闭式解和 transformers 比较：

# %%
from course_lib.lab.grading import check
check("4.0.2");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.2")   # 预测题在第 2 节的网格之前已经问过；这里是理解题和一道迁移题

# %% [markdown]
# ## 下一步
# 4.0.3：梯度裁剪——warmup 管住「前期」，裁剪管住「任何时候突然出现的大梯度」。
