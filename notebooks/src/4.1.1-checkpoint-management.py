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
# # 4.1.1 · 检查点管理 (checkpoint management) 深入
#
# **学习目标**
# - 配置「每 N 步保存、只保留最近 K 个」，并理解轮换 (rotation) 为什么要**先写新的、再删旧的**；
# - 说清训练状态 (training state) 里每一项为什么必须存：模型、优化器、调度器、GradScaler、步数、每个 rank 的 RNG、数据位置；
# - 亲眼验证精确恢复 (exact resume)，并看到漏掉其中一项时损失曲线怎样偏离；
# - 知道常见陷阱（来自 HF / accelerate / torchtitan / Lightning 的 issue）。
#
# **前置知识**：4.0.1（检查点与自动恢复）。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import torch

from course_lib.checkpoint import CheckpointManager
from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes, print_table
from course_lib.train import Callback, Trainer

ROOT = runs_dir("4.1.1", fresh=True)
MC = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
STEPS = pick(40, 12)


def cfg(name, **kw):
    base = dict(max_steps=STEPS, batch_size=4, seq_len=32, warmup_steps=3, eval_interval=STEPS, eval_batches=1,
                log_interval=10_000, ckpt_interval=STEPS // 4, keep_last=2, out_dir=str(ROOT / name), tensorboard=False,
                device="cpu", seed=5)
    base.update(kw)
    return TrainConfig(**base)

# %% [markdown]
# ## 1. 每 N 步保存，保留最近 K 个

# %%
ref = Trainer(MC, cfg("ref"), console=False)
ref.fit()
mgr = CheckpointManager(ROOT / "ref", keep_last=2)
print("ckpt_interval =", ref.cfg.ckpt_interval, "| keep_last = 2 | on disk:", [p.name for _, p in mgr.list_complete()])

# %%
# NBVAL_CHECK_OUTPUT
print("complete checkpoints kept:", len(mgr.list_complete()), "| newest is the final step:", mgr.latest().name.endswith(f"{STEPS:08d}"))

# %% [markdown]
# `CheckpointManager.save` 的保存顺序见 4.0.1 第 3 节；和轮换有关的只有最后一步：新检查点改名到位之后，才删除最旧的。
# accelerate 的 `save_state` 在写新检查点**之前**先把旧的删到 `total_limit − 1` 个：如果写的时候崩溃，磁盘上只剩 `total_limit − 1` 个完整检查点——
# `total_limit = 1` 时一个都不剩。先写新的、再删旧的：任何时刻崩溃，上一次保存后留下的那 K 个完整检查点都还在。
#
# ## 2. 状态里有什么，为什么

# %%
state = mgr.load(mgr.latest())
rows = []
why = {"model": "weights", "optimizer": "AdamW moments m, v and step count: without them the first steps after resume are wrong-sized",
       "scheduler": "lr position: without it warmup restarts (HF #33336-style loss jump)",
       "scaler": "fp16 loss scale + growth tracker (None in fp32 runs)", "step": "where the loop continues",
       "rng": "python/numpy/torch RNG of EVERY rank (dropout, sampling)", "data": "batches consumed: no sample re-read or skipped",
       "config": "model + train config: refuse to resume a different model", "world_size": "data order depends on it",
       "epoch": "for logging", "skipped_steps": "GradScaler skips so far", "tokenizer": "what the ids mean"}
for k, v in state.items():
    n = sum(t.numel() * t.element_size() for t in v.values() if torch.is_tensor(t)) if k == "model" else None
    rows.append({"key": k, "why it is saved": why.get(k, "bookkeeping (format, step)")})
print_table(rows)
print("data position:", state["data"])

# %% [markdown]
# ## 3. 精确恢复，以及漏掉一项会怎样
#
# 模拟崩溃（在第 `ckpt_interval+1` 步后抛异常），重新构造 `Trainer`：它自动从最新完整检查点恢复。
# 然后做一个「坏」的恢复：只恢复模型和优化器（很多手写训练脚本就是这样），调度器、RNG 和数据位置都从头开始。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；实验跑完后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.1", "lr_ratio_partial_vs_full")

# %%
class Crash(Callback):
    def on_step_end(self, trainer, metrics):
        if trainer.step == trainer.cfg.ckpt_interval * 2 + 1:
            raise KeyboardInterrupt


try:
    Trainer(MC, cfg("good"), callbacks=[Crash()], console=False).fit()
except KeyboardInterrupt:
    pass
good = Trainer(MC, cfg("good"), console=False)
resumed_at = good.step
st = CheckpointManager(ROOT / "good").load(good.resumed_from)  # read it now: keep_last=2 rotates it away later
good.fit()
exact = all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), good.model.state_dict().values(), strict=True))

bad = Trainer(MC, cfg("bad", resume=False), console=False)
bad.model.load_state_dict(st["model"]); bad.optimizer.load_state_dict(st["optimizer"]); bad.step = st["step"]
bad.fit()
print(f"resumed at step {resumed_at}; full-state resume bitwise equal to uninterrupted: {exact}")
fig, ax = new_axes("Resume with full state vs model+optimizer only", "optimizer step", "training loss (nats/token)")
ax.plot([h["step"] for h in ref.history], [h["loss"] for h in ref.history], lw=4, alpha=0.4, label="uninterrupted")
ax.plot([h["step"] for h in good.history], [h["loss"] for h in good.history], "x", label="resumed: full state")
ax.plot([h["step"] for h in bad.history], [h["loss"] for h in bad.history], ".--", label="resumed: model+optimizer only")
ax.legend();
# the optimizer's state_dict carries the lr of the saved step, so the first step looks fine; from the
# second step on, the restarted scheduler drives the lr back into warmup
print(f"lr on the 2nd step after resume  full state: {good.history[1]['lr']:.2e} | model+optimizer only: "
      f"{bad.history[1]['lr']:.2e} (scheduler restarted its warmup)")

# %%
p.reveal(bad.history[1]["lr"] / good.history[1]["lr"])

# %% [markdown]
# 部分恢复的曲线偏离：学习率重新预热 (warmup)、数据从第 0 批重新读（模型已经见过的样本）。
#
# ## 4. 已知陷阱（来自大项目的 issue）
# - 恢复后 loss 跳变：没有恢复调度器、GradScaler、RNG 或数据位置（HF transformers #33336、#17032；accelerate #2016；torchtitan #809；Lightning #10766）。
#   主流训练框架都不承诺逐位相同的恢复；本课承诺并测试它（`tests/unit/test_train.py`）。
# - 先删旧检查点再写新的（accelerate，见第 1 节）。
# - `torchrun --max-restarts` 重启**整个组**：脚本必须自己找到并加载最新检查点（4.1.2）。
# - DDP：只有 rank 0 写；每个 rank 的 RNG 不同，要收集起来一起存；恢复时进程数必须相同（数据顺序依赖它；分片检查点可以换卡数恢复，见 4.1.6）。
# - 梯度累积：本课只在 optimizer step 之间保存，周期中间崩溃从周期开头恢复（4.1.4）。
# - 加载用 `weights_only=True`：完整 pickle 会执行文件里的代码（4.0.1 第 4 节演示过）。
#
# ## 小结
# - 每 N 步保存、保留最近 K 个；先写后删；`COMPLETE.json` 最后写。
# - 状态 = 模型 + 优化器 + 调度器 + scaler + 步数 + 所有 rank 的 RNG + 数据位置 + 配置。漏一项，恢复就不再精确。
#
# ## 练习
# 本课有两个练习：
# 1. `exercises/ex411_keep_last_k.py`：检查点轮换（「最新」按步数数值算，只删完整的旧检查点）。
# 2. **综合练习** `exercises/ex411_train_script.py`：自己写一个完整的训练脚本。模型和数据由
#    `course_lib` 给出，循环是你的：每 N 步保存（模型、优化器、scheduler、步数、RNG、数据位置、配置），
#    启动时从最新的完整 checkpoint 自动恢复，LambdaLR 预热，梯度裁剪，日志。
#    评分器 (grader) 把它当真正的进程运行：先在第 6 步之后、再在保存时写第一个文件和第二个文件写到一半时、最后在写好的文件换名到位之前，各 SIGKILL 一次，
#    每次用同一条命令重新启动，最后要求权重与不中断的运行 **逐位相同**；不同时会说出哪一项状态没有恢复
#    （例如「恢复后的学习率与不中断时不同：scheduler 状态没有保存/恢复？」）。
#    自己试：`python exercises/ex411_train_script.py --out-dir runs/my_script`，中途 Ctrl-C 再运行一次。
#
# 卡住时运行 `hint("ex411_train_script")`（或 `hint("ex411_keep_last_k")`），每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("ex411_train_script") when stuck

check("4.1.1")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.1")   # 预测题在第 3 节的实验之前已经问过

# %% [markdown]
# ## 下一步
# - 4.1.2：多进程 DDP，以及杀掉一个 worker 后的自动重启恢复；
# - 把 `keep_last` 改成 1，用 `COURSE_FAULT=save_partial@N`（见 4.0.1）让保存中途崩溃，确认仍能恢复。
