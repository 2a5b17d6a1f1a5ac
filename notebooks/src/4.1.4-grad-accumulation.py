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
# # 4.1.4 · 梯度累积 (gradient accumulation)
#
# **学习目标**
# - 理解梯度累积：N 个小批次 (micro-batch) 各自反向、梯度相加，再做**一次** optimizer step，等价于一个 N 倍大的批次；
# - 知道三个细节：loss 要除以 N；裁剪、optimizer、调度器每个累积周期只走一次；DDP 下只在最后一个小批次同步梯度；
# - 知道检查点只在 optimizer step 之间保存：在累积周期中间崩溃，会从该周期的**开头**恢复；
# - 在这台机器上测量：等价性（参数差）、内存与速度的取舍。
#
# **前置知识**：4.0.3（梯度裁剪），4.1.2（DDP）。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import time

import torch

from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.memory import measure_peak
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes, print_table
from course_lib.train import Callback, ReplayDDPBatches, Trainer

ROOT = runs_dir("4.1.4", fresh=True)
MC = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=176, max_seq_len=128)
STEPS = pick(40, 8)


def cfg(name, **kw):
    base = dict(max_steps=STEPS, batch_size=2, seq_len=64, warmup_steps=2, eval_interval=STEPS, eval_batches=2,
                log_interval=10_000, ckpt_interval=max(2, STEPS // 4), out_dir=str(ROOT / name), tensorboard=False,
                device="cpu", seed=11)
    base.update(kw)
    return TrainConfig(**base)

# %% [markdown]
# ## 1. 在训练循环里
#
# 用 DDP 的**公开 API** `no_sync()` 写：前 k−1 个小批次在 `no_sync()` 里做 forward + backward，梯度只在本地累加、不通信；
# 最后一个小批次在它外面，backward 时一次 all-reduce 累加好的梯度。
#
# ```python
# for micro in range(k):
#     x, y = next_batch()
#     sync = micro == k - 1
#     ctx = contextlib.nullcontext() if (ddp is None or sync) else ddp.no_sync()
#     with ctx:                                                # forward 和 backward 都要在 with 里面
#         with torch.autocast(...):
#             loss = model(x, targets=y).loss
#         (loss / k).backward()                                # 平均：k 个 1/k 相加 = 大批次的均值
# clip_grad_norm_(...); optimizer.step(); optimizer.zero_grad(); scheduler.step()   # 每个周期一次
# ```
#
# `course_lib` 的 `Trainer.train_step` 和 nanoGPT 一样，用的是另一种写法：`ddp.require_backward_grad_sync = (micro == k - 1)`。
# 它让每个小批次走同一段代码，但它是 DDP 的**内部属性**，不是公开 API（将来的版本可能改名），而且必须在 **forward 之前**设好——
# DDP 在 forward 时读它，决定这次 backward 要不要挂上 all-reduce；在 forward 之后才改就晚了。自己写代码时优先用 `no_sync()`。
#
# ## 2. 等价性：N 个大小为 B 的小批次 = 一个大小为 N·B 的批次

# %%
rows = []
for n in (2, 4):
    acc = Trainer(MC, cfg(f"acc{n}", accumulation_steps=n), console=False, save_checkpoints=False)
    acc.fit()
    big = Trainer(MC, cfg(f"big{n}"), callbacks=[ReplayDDPBatches(1, n)], console=False, save_checkpoints=False)
    big.fit()
    d = max((a - b).abs().max().item() for a, b in zip(acc.model.state_dict().values(), big.model.state_dict().values(), strict=True))
    rows.append({"N micro-batches x B=2": n, "one batch of": 2 * n, "max |param diff| after steps": f"{d:.1e}",
                 "final loss (acc)": round(acc.history[-1]["loss"], 4), "final loss (big)": round(big.history[-1]["loss"], 4),
                 "optimizer steps": acc.optimizer.state_dict()["state"][0]["step"].item()})
    assert d < 1e-6, d   # what the text below states
print_table(rows)

# %% [markdown]
# 差别不到 1e-6（上表的 max |param diff|）：只是浮点加法顺序不同。DDP 下同样成立（2 个 rank × 累积 2 = 单进程 4 倍批次），
# 见 `tests/reliability/test_ddp_torchrun.py::test_two_rank_ddp_equals_one_process_on_the_combined_batch[2]`。
#
# ## 3. 代价和收益：内存 vs 时间（在这台机器上测）
#
# 同样的「有效批次」(effective batch) 16，用不同的 (micro-batch, N) 组合，测峰值内存和每个 optimizer step 的时间。
# 预期：峰值内存随 micro-batch 下降（单元格断言了这一点）；时间通常随 N 上升（小矩阵乘法效率低、循环开销多）。
# 计时在繁忙的小机器上有噪声，所以单元格打印的是这次测到的时间比，并说出它的方向，而不做断言。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.4", "mem_ratio_b2_vs_b16")

# %%
combos = [(16, 1), (8, 2), (4, 4), (2, 8)]
res = []
for b, n in combos:
    mem = measure_peak(MC, batch_size=b, seq_len=64, dtype="fp32")["peak"] / 2**20
    tr = Trainer(MC, cfg(f"t{b}", batch_size=b, accumulation_steps=n, max_steps=pick(6, 2)), console=False,
                 save_checkpoints=False)
    tr.train_step()
    t0 = time.perf_counter()
    for _ in range(pick(5, 1)):
        tr.train_step()
    res.append({"micro-batch": b, "N": n, "peak MiB (one micro-step)": round(mem, 1),
                "s / optimizer step": round((time.perf_counter() - t0) / pick(5, 1), 3)})
base = res[0]["s / optimizer step"]
for r in res:
    r["time vs N=1"] = round(r["s / optimizer step"] / base, 2)
print_table(res)
fig, ax = new_axes("Same effective batch (16), different accumulation", "micro-batch size (sequences)", "peak memory (MiB)")
ax.plot([r["micro-batch"] for r in res], [r["peak MiB (one micro-step)"] for r in res], "o-", label="measured peak memory")
ax2 = ax.twinx(); ax2.plot([r["micro-batch"] for r in res], [r["s / optimizer step"] for r in res], "s--", color="C1", label="s / step")
ax2.set_ylabel("time per optimizer step (s)"); ax.legend(loc="upper left"); ax2.legend(loc="upper right");
peaks = [r["peak MiB (one micro-step)"] for r in res]
assert all(a > b for a, b in zip(peaks, peaks[1:], strict=False)), f"peak memory should fall with the micro-batch: {peaks}"
print(f"peak memory {peaks[0]:.0f} -> {peaks[-1]:.0f} MiB; time per optimizer step at N={res[-1]['N']}: "
      f"x{res[-1]['time vs N=1']:.2f} of N=1 ({'slower' if res[-1]['time vs N=1'] > 1 else 'not slower'} on this machine)")

# %%
p.reveal(res[-1]["peak MiB (one micro-step)"] / res[0]["peak MiB (one micro-step)"])

# %% [markdown]
# ## 4. 在累积周期中间崩溃会怎样？
#
# 检查点只在 optimizer step 之间保存：累积到一半的梯度只在 `.grad` 里，不保存。数据位置按小批次计数，
# 在检查点处总是 N 的整数倍。所以崩溃后从**最近检查点那个周期的开头**恢复，重新读同样的小批次——结果仍与不中断的运行逐位相同。

# %%
n = 3
ref = Trainer(MC, cfg("ref", accumulation_steps=n), console=False)
ref.fit()
ck = ref.cfg.ckpt_interval


class CrashMidCycle(Callback):
    def on_batch(self, trainer, x, y):
        if trainer.batches_consumed == ck * n + 2:   # 2nd micro-batch of step ck+1
            raise KeyboardInterrupt("simulated crash in the middle of an accumulation cycle")
        return x, y


try:
    Trainer(MC, cfg("crash", accumulation_steps=n), callbacks=[CrashMidCycle()], console=False).fit()
except KeyboardInterrupt as e:
    print("crashed:", e)
res_tr = Trainer(MC, cfg("crash", accumulation_steps=n), console=False)
print(f"resumed at optimizer step {res_tr.step}, micro-batches consumed {res_tr.batches_consumed} (= {res_tr.step} x {n})")
res_tr.fit()
print("bitwise equal to the uninterrupted run:",
      all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), res_tr.model.state_dict().values(), strict=True)))

# %% [markdown]
# ## 小结
# - loss 除以 N、每周期一次 clip/step/scheduler；DDP 下只在最后一个小批次同步梯度。
# - 累积 = 用时间换内存：有效批次不变，峰值内存随 micro-batch 变小。
# - 崩溃在周期中间 → 从周期开头恢复（我们不保存半个周期的梯度：除了上一个检查点之后的完整步，最多再多算 N−1 个小批次）。
#
# ## 练习
# 打开 `exercises/ex414_grad_accumulation.py`：写一个与大批次等价的梯度累积步。

# %%
from course_lib.lab.grading import check

check("4.1.4")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.4")   # 预测题在第 3 节的测量之前已经问过

# %% [markdown]
# ## 下一步
# - 4.1.5：混合精度——另一种用更少内存训练的方法；
# - 试试 `python -m course_lib.train --accumulation-steps 4 --batch-size 4`，对比 `--batch-size 16` 的 tokens/s。
