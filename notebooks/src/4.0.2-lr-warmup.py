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
# 在图上看到：学习率偏大时，没有 warmup 的前几十步 loss 会冲高或停滞，有 warmup 则平稳下降。
#
# **前置知识**：4.0.1；AdamW。 **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.threads import setup_threads

setup_threads();

# %%

from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.paths import runs_dir
from course_lib.plotting import new_axes, print_table
from course_lib.schedule import lr_multiplier, schedule_values
from course_lib.monitor import ProgressBar
from course_lib.train import Trainer

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
# nanoGPT 的 `train.py` 又稍有不同：`(it + 1) / (warmup_iters + 1)`，第 0 步是 `1/(warmup+1)`，第 `warmup` 步才到峰值。
# 三种写法只差一两步，但读别人的代码时要知道自己用的是哪一种。本课的 `course_lib` 默认 HF 约定（`hf_convention=True`），
# 这样和 `transformers` 的数值逐一相同（`tests/unit/test_schedule.py` 以 transformers 为参照 oracle 检查）。

# %%
# NBVAL_CHECK_OUTPUT
for s in range(4):
    print(s, "HF:", round(lr_multiplier(s, kind="linear", warmup_steps=4, total_steps=10), 4),
          "build-nanogpt:", round(lr_multiplier(s, kind="linear", warmup_steps=4, total_steps=10, hf_convention=False), 4),
          "nanoGPT train.py:", round((s + 1) / (4 + 1), 4))

# %% [markdown]
# ## 2. 实验：学习率偏大时，warmup 有没有用？
#
# 同样的模型和数据，峰值学习率取得偏大（`LR`），比较 `warmup_steps=0` 和 `warmup_steps=WARMUP`，每种 3 个随机种子。不裁剪梯度，让差别显露出来。

# %%
STEPS, WARMUP, LR = pick(150, 16), pick(30, 4), 2e-2
SEEDS = (0, 1, 2)
curves = {}
for warm in (0, WARMUP):
    for seed in SEEDS:
        cfg = TrainConfig.default(max_steps=STEPS, warmup_steps=warm, lr=LR, min_lr=LR / 10, grad_clip=0.0,
                                  seed=seed, out_dir=str(runs_dir(f"4.0.2/w{warm}-s{seed}", fresh=True)),
                                  ckpt_interval=0, tensorboard=False, eval_interval=STEPS, eval_batches=1)
        h = Trainer(ModelConfig.small(), cfg, callbacks=[ProgressBar(f"warmup {warm}, seed {seed}")], console=False,
                    save_checkpoints=False).fit()
        curves[(warm, seed)] = h

fig, (ax, ax2) = new_axes(f"Peak lr {LR}: with vs without warmup (3 seeds)", "optimizer step", "training loss (nats/token)", ncols=2)
for (warm, seed), h in curves.items():
    ax.plot([r["step"] for r in h], [r["loss"] for r in h], color="C1" if warm else "C0", alpha=0.7,
            label=(f"warmup {warm}" if seed == 0 else None))
    if seed == 0:
        ax2.plot([r["step"] for r in h], [r["lr"] for r in h], color="C1" if warm else "C0", label=f"warmup {warm}")
ax.legend(); ax2.set_ylabel("learning rate"); ax2.set_title("lr used at each step"); ax2.legend();

# %%
rows = []
for warm in (0, WARMUP):
    early = [max(r["loss"] for r in curves[(warm, s)][: max(3, STEPS // 5)]) for s in SEEDS]
    final = [sum(r["loss"] for r in curves[(warm, s)][-5:]) / 5 for s in SEEDS]
    rows.append({"warmup": warm, "max loss, first 20% of steps": sum(early) / 3, "final loss (mean last 5)": sum(final) / 3,
                 "worst seed final": max(final)})
print_table(rows)
no_w, w_ = rows
print(f"early spike: no warmup {no_w['max loss, first 20% of steps']:.3f} vs warmup {w_['max loss, first 20% of steps']:.3f}; "
      f"final: {no_w['final loss (mean last 5)']:.3f} vs {w_['final loss (mean last 5)']:.3f} "
      f"-> warmup {'helped' if w_['final loss (mean last 5)'] < no_w['final loss (mean last 5)'] else 'did not help'} at lr {LR} in this run")

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

    w.interact(explore, peak_lr=w.FloatLogSlider(value=3e-3, base=10, min=-5, max=-1),
               warmup=w.IntSlider(20, 0, 500), total=w.IntSlider(200, 10, 2000),
               kind=["constant", "linear", "cosine", "wsd"], min_lr_frac=w.FloatSlider(value=0.1, min=0, max=1, step=0.05))
except ImportError:
    print("ipywidgets not installed: use the static plot above")

# %% [markdown]
# 读图（以上表和上一行的判定为准，它们是本次运行测得的）：没有 warmup 时，第 1 步就用满学习率，而 Adam 的二阶矩估计此时只基于一个批次，
# 更新方向噪声很大，前期容易冲高或在平台上停留；有 warmup 时 lr 从 0 慢慢升上去，前期更平滑。学习率不够大时两者差别很小——
# warmup 是为「偏大的学习率」准备的；快速模式 (quick mode) 步数太少，看不出差别。
#
# ## 小结
# - warmup 让 Adam 的统计量先稳定，再用大学习率；衰减（cosine / linear / WSD）让末期收敛。
# - HF 约定第 0 步 lr = 0；nanoGPT 从 1/warmup 开始。写调度器时先说明你实现的是哪一个。
#
# ## 练习
# 实现 `exercises/ex402_lr_schedule.py` 的 `lr_at`（warmup + cosine，带下限 min_lr），评分与闭式解和 transformers 比较：

# %%
from course_lib.grading import check
check("4.0.2");

# %% [markdown]
# ## 自检

# %%
from course_lib.quiz import quiz

# 最后一题是「预测数值」：它的答案由本课上面测得的数值决定。
q = quiz("4.0.2", measured={"hf_lr_step1": lr_multiplier(1, kind="linear", warmup_steps=4, total_steps=10)})

# %% [markdown]
# ## 下一步
# 4.0.3：梯度裁剪——warmup 管住「前期」，裁剪管住「任何时候突然出现的大梯度」。
