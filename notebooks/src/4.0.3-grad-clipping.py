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
# # 4.0.3 · 梯度裁剪 (gradient clipping)
#
# **学习目标**：每一步测量全局梯度范数 (global grad-norm) 并记录；知道裁剪放在循环的哪里（backward 之后、AMP 反缩放 unscale 之后、optimizer.step 之前）；
# 看到一个异常批次 (bad batch) 造成的梯度尖峰 (spike) 怎样在不裁剪时拖累之后的整段训练（到运行结束都追不回来），裁剪时末期 loss 与没有尖峰的运行相同；学会从记录的范数里选 `max_norm`。
#
# **前置知识**：4.0.2；AdamW 的一阶/二阶矩。 **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%

from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes, print_table
from course_lib.monitor import ProgressBar
from course_lib.train import Callback, Trainer

# %% [markdown]
# ## 1. 裁剪在循环里的位置
# `course_lib/train.py` 的 `train_step`（节选）：
# ```python
# loss.backward()                        # 1. 梯度
# scaler.unscale_(optimizer)             # 2. fp16: 先把梯度除回真实大小，否则裁剪的是放大后的梯度
# grad_norm = clip_grad_norm_(params, c.grad_clip)   # 3. 测量并裁剪（返回裁剪前的范数，用于记录）
# check_finite(step, loss, grad_norm)    # 4. NaN 守卫（4.0.4）
# optimizer.step()                       # 5. 更新
# ```
#
# ## 2. 实验：注入梯度尖峰
# 一个回调 (callback) 在几个固定步把梯度放大 1000 倍，模拟一个坏批次（比如一段全是乱码的数据）。同样的种子，比较 `grad_clip=0`（不裁剪）和 `grad_clip=1.0`。

# %%
STEPS = pick(240, 40)
SPIKES = (pick(60, 12), pick(150, 28))

class GradSpike(Callback):
    """Multiply every gradient by `factor` at the given steps (a simulated bad batch)."""
    def __init__(self, steps, factor=1000.0):
        self.steps, self.factor = set(steps), factor
    def on_after_backward(self, trainer):
        if trainer.step + 1 in self.steps:
            for p in trainer.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.factor)

runs = {}
for clip in (0.0, 1.0):
    cfg = TrainConfig.default(max_steps=STEPS, grad_clip=clip, out_dir=str(runs_dir(f"4.0.3/clip{clip}", fresh=True)),
                              ckpt_interval=0, tensorboard=False, eval_interval=STEPS, eval_batches=1, seed=0)
    runs[clip] = Trainer(ModelConfig.small(), cfg, callbacks=[GradSpike(SPIKES), ProgressBar(f"grad_clip={clip}")], console=False, save_checkpoints=False).fit()
clean_cfg = TrainConfig.default(max_steps=STEPS, grad_clip=1.0, out_dir=str(runs_dir("4.0.3/clean", fresh=True)),
                                ckpt_interval=0, tensorboard=False, eval_interval=STEPS, eval_batches=1, seed=0)
runs["clean"] = Trainer(ModelConfig.small(), clean_cfg, callbacks=[ProgressBar("no spikes")], console=False,
                        save_checkpoints=False).fit()

# %%
fig, (ax, ax2) = new_axes("Injected gradient spikes: with vs without clipping", "optimizer step", "training loss (nats/token)", ncols=2)
for key, lab in ((0.0, "no clipping"), (1.0, "clip max_norm=1.0"), ("clean", "no spikes (reference)")):
    h = runs[key]
    ax.plot([r["step"] for r in h], [r["loss"] for r in h], label=lab, lw=1.2)
    ax2.semilogy([r["step"] for r in h], [r["grad_norm"] for r in h], label=lab, lw=1)
for s in SPIKES:
    ax.axvline(s, color="red", ls=":", lw=1)
ax.legend(); ax2.set_ylabel("grad-norm before clipping (log)"); ax2.set_title("logged grad-norm"); ax2.legend();

# %%
rows = [{"run": k if isinstance(k, str) else f"grad_clip={k}", "final loss (mean last 10)": sum(r["loss"] for r in h[-10:]) / 10,
         "max grad-norm": max(r["grad_norm"] for r in h)} for k, h in runs.items()]
print_table(rows)

# %% [markdown]
# 读图：不裁剪时，尖峰那一步的梯度放大了 1000 倍，平方后是 10⁶ 倍。它进入 Adam 的二阶矩 v = β₂·v + (1−β₂)·g²（梯度平方的滑动平均）：
# β₂ = 0.95 时 v 只吸收了这个平方的 5%，所以 v 变成原来的约 (1−β₂)·10⁶ ≈ 5×10⁴ 倍（不是 10⁶ 倍）。之后每一步的更新量 m̂/√v̂ 里，
# √v 大了约 220 倍，更新被压得很小；v 按 0.95ⁿ 衰减，要 n ≈ ln(5×10⁴)/ln(1/0.95) ≈ 210 步才回到原来的量级——loss 跳上去之后只能慢慢往回爬，到运行结束也没有追上参照（上表的末期 loss）。
#
# 尖峰**那一步本身**为什么 loss 也会跳？那一步的一阶矩 m ≈ (1−β₁)·1000·g = 100·g 也被这个坏梯度主导，而 √v ≈ √(0.05·10⁶)·|g| ≈ 224·|g|，
# 所以每个坐标的更新 ≈ lr · 0.45 · sign(g)：Adam 的更新量仍然有界（lr 量级），但方向完全由这一个坏批次决定，之前积累的动量被冲掉，
# 模型沿坏方向走了整整一步——紧接着记录的 loss 就跳上去。裁剪后，尖峰那一步的梯度被缩到范数 1，m 和 v 几乎不受影响。
#
# ## 3. 怎么选 max_norm
# 看**干净运行**记录的梯度范数分布：`max_norm` 取在正常范围的上沿（例如 99 分位数附近，或中位数的 2–5 倍），
# 这样正常步几乎不被裁剪，异常步被压住。常见默认值 1.0（nanoGPT、GPT-3、LLaMA 都用它）是大模型上的经验值，
# 不是从**这个**模型的分布推出来的：下面的表同时给出 max_norm = 1.0 和按 p99 选出的阈值各会裁剪多少正常步。
# 被裁剪的正常步只是整体缩小、方向不变，所以 1.0 偏小并不会毁掉训练（上面的参照运行 `clean` 就是用 max_norm = 1.0 训练的，下表会显示它裁剪了多少步），但它已经不只是「挡异常」，而是在持续改变步长。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；下一个单元格打印分布，再下一个揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.0.3", "clean_median_grad_norm")

# %%
import statistics
norms = sorted(r["grad_norm"] for r in runs["clean"][len(runs["clean"]) // 10:])   # skip the first 10% (warmup)
q = lambda p: norms[min(len(norms) - 1, int(p * len(norms)))]
p99 = q(0.99)
share = lambda t: sum(n > t for n in norms) / len(norms)
spike_norm = max(r["grad_norm"] for r in runs[0.0])
print_table([{"median": statistics.median(norms), "p90": q(0.9), "p99": p99, "max": norms[-1],
              "clipped at 1.0": share(1.0), "clipped at p99": share(p99), "spike grad-norm": spike_norm}])
print(f"max_norm = 1.0 would clip {share(1.0):.0%} of the clean steps; a threshold at p99 = {p99:.2f} clips "
      f"{share(p99):.0%} of them and still cuts the injected spike ({spike_norm:.0f}) by {spike_norm / p99:.0f}x.")
assert share(p99) <= 0.02 and spike_norm > 10 * p99, "the p99 threshold should keep clean steps and stop the spike"
fig, ax = new_axes("Grad-norm distribution (clean run)", "grad-norm before clipping", "steps")
ax.hist(norms, bins=30); ax.axvline(1.0, color="red", ls="--", label="max_norm = 1.0"); ax.legend();

# %%
p.reveal(statistics.median(norms))

# %% [markdown]
# ## 小结
# - 每一步记录裁剪前的全局梯度范数：注入的尖峰在它上面一眼可见（第 3 节的表：spike grad-norm 是正常中位数的上千倍）。
# - 裁剪放在 backward（和 AMP unscale）之后、optimizer.step 之前；按全局范数裁剪保持梯度方向不变。
#
# ## 练习
# 实现 `exercises/ex403_clip_grad_norm.py`，评分与 `torch.nn.utils.clip_grad_norm_` 比较（包括没有梯度的参数）：

# %%
from course_lib.lab.grading import check
check("4.0.3");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.3")   # 预测题在第 3 节的分布之前已经问过

# %% [markdown]
# ## 下一步
#
# - 把 `SPIKES` 改成更多、更大的尖峰，看 `max_norm` 取多小才能挡住它们，又不至于在正常步里一直生效。
# - 在 4.1.5 里，裁剪要放在 `scaler.unscale_(optimizer)` 之后：对照 `course_lib/train.py` 的 `train_step` 看看顺序。
# - 下一课 4.0.4：把 grad-norm 和 loss 一起记录下来，出问题时一眼看出是哪一步。
