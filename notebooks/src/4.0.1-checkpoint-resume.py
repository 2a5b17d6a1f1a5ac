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
# # 4.0.1 · 检查点与自动恢复 (checkpoint + resume)
#
# **学习目标**
# - 知道一个训练检查点 (training checkpoint) 里必须有什么：模型、优化器、学习率调度器、GradScaler、步数、随机数状态 (RNG state)、数据位置 (data position)；
# - 亲眼看到：训练进程被 `SIGKILL` 杀掉后重启，结果与从未中断的训练**逐位相同** (bitwise-identical)；
# - 知道怎样让保存本身不怕崩溃（原子保存的顺序见第 3 节）；坏文件怎样被识别、怎样回退 (fallback)；
# - 能凭记忆写出 `save_checkpoint` / `load_checkpoint`（练习 ex401）。
#
# **前置知识**：PyTorch 训练循环（`loss.backward()`、`optimizer.step()`），`state_dict()`。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 40 分钟。
#
# > 训练检查点和**推理权重** (inference weights) 是两种不同的文件：检查点用来**继续训练**（含优化器状态、RNG、数据位置，比权重大得多：第 1 节末尾打印了本课的倍数），
# > 推理权重只含权重和配置（safetensors + config.json），用来部署。4.2.1 会做后者。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import os
import time

import torch

from course_lib.checkpoint import CheckpointError, CheckpointManager, safe_torch_load
from course_lib.config import pick
from course_lib.monitor import last_per_step, read_jsonl
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes
from course_lib.lab.progress_bars import watch_steps
from course_lib.lab.quiz import predict
from course_lib.lab.runner import run, run_and_kill, train_command

STEPS, INTERVAL = pick(160, 30), pick(20, 5)
KILL_AFTER = pick(90, 17)          # kill once the log shows at least this step
base = runs_dir("4.0.1", fresh=True)

def train_cmd(out_dir):
    # the real CLI, on CPU: bitwise equality is a CPU promise (CUDA kernels may be non-deterministic)
    return train_command(out_dir, max_steps=STEPS, ckpt_interval=INTERVAL, log_interval=1, eval_interval=STEPS,
                         device="cpu", tensorboard=False, keep_last=2)

print(" ".join(train_cmd("runs/4.0.1/killed")[1:]))

# %% [markdown]
# ## 1. 训练、杀掉、重启
#
# `course_lib.lab.runner.run_and_kill` 用 `subprocess.Popen` 启动真正的训练进程 `python -m course_lib.train`，盯着它写的
# `metrics.jsonl`，到第 `KILL_AFTER` 步之后发送 `SIGKILL`——不能被捕获，不会执行任何清理代码，和 OOM killer 杀进程一样。
# 但 SIGKILL **不等于断电**：进程死了，操作系统的页缓存 (page cache) 还在，已经 `write` 却没落盘的字节照样会写到磁盘上。
# 断电时只有 `fsync` 过的数据才可靠，所以保存代码每一步都 fsync；这个实验（以及 kill 测试）证明的是「进程随时被杀也能恢复」，
# 证明不了「断电也不丢」——后者要靠保存顺序和 fsync 本身的正确性。
# 然后用**完全相同的命令**再启动一次：`Trainer` 在 `out_dir` 里找到最新的完整检查点，自动从那一步继续。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；第 2 节打印重复的步数后揭晓）：

# %%
p = predict("4.0.1", "redo_over_interval")

# %%
killed = base / "killed"
t0 = time.perf_counter()
with watch_steps(killed, KILL_AFTER, "train until SIGKILL"):
    k = run_and_kill(train_cmd(killed), killed, kill_after_step=KILL_AFTER)
last_logged = k.last_logged_step
mgr = CheckpointManager(killed, verbose=False)
print(f"exit code {k.returncode} (-9 = SIGKILL); last logged step {last_logged}; "
      f"complete checkpoints: {[s for s, _ in mgr.list_complete()]}")

# %%
with watch_steps(killed, STEPS, "same command again"):
    r = run(train_cmd(killed), killed)
print("\n".join(l for l in r.output.splitlines() if "resumed" in l or "done" in l))
assert r.returncode == 0, r.tail(20)

# %% [markdown]
# 再跑一次从不中断的参照运行 (reference run)，比较两者最后一个检查点里的每个张量：

# %%
ref = base / "uninterrupted"
with watch_steps(ref, STEPS, "uninterrupted"):
    r2 = run(train_cmd(ref), ref)
assert r2.returncode == 0, r2.tail(20)
print(f"three processes took {time.perf_counter() - t0:.0f}s")

a = CheckpointManager(killed, verbose=False).load(CheckpointManager(killed).path_for(STEPS))
b = CheckpointManager(ref, verbose=False).load(CheckpointManager(ref).path_for(STEPS))
same_model = all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
same_opt = all(torch.equal(x, y) for k in b["optimizer"]["state"] for x, y in
               zip(a["optimizer"]["state"][k].values(), b["optimizer"]["state"][k].values(), strict=True))
print(f"model tensors bitwise equal: {same_model}; optimizer state bitwise equal: {same_opt}")
state_bytes = (CheckpointManager(ref).path_for(STEPS) / "state.pt").stat().st_size
weight_bytes = sum(t.numel() * t.element_size() for t in b["model"].values())
print(f"state.pt {state_bytes / 1e6:.2f} MB = {state_bytes / weight_bytes:.1f}x the model weights ({weight_bytes / 1e6:.2f} MB): "
      "AdamW's two moments are as large as the weights, plus RNG, data position and config")

# %% [markdown]
# ## 2. 两条 loss 曲线叠在一起
#
# 恢复后的进程**追加**写同一个 `metrics.jsonl`：从最后一个检查点到被杀之间的那几步被记录了两次（杀之前一次、恢复后一次）。
# 我们对每一步只保留**最后一条**记录（`course_lib.monitor.last_per_step`）：后写的那条才是通向最终权重的那次计算。

# %%
raw = [r for r in read_jsonl(killed / "metrics.jsonl") if "loss" in r]
resumed_curve = last_per_step(raw)
ref_curve = last_per_step(read_jsonl(ref / "metrics.jsonl"))
dup = len(raw) - len(resumed_curve)
print(f"{len(raw)} records, {dup} duplicated steps (logged before the kill and again after the resume)")
fig, ax = new_axes("Killed + resumed vs uninterrupted run", "optimizer step", "training loss (nats/token)")
ax.plot([r["step"] for r in ref_curve], [r["loss"] for r in ref_curve], lw=4, alpha=0.35, label="uninterrupted")
ax.plot([r["step"] for r in resumed_curve], [r["loss"] for r in resumed_curve], lw=1.2, label="killed + resumed")
ax.axvline(last_logged, color="red", ls="--", lw=1, label=f"SIGKILL after step {last_logged}")
ax.legend();

# %%
identical = [x["loss"] for x in resumed_curve] == [y["loss"] for y in ref_curve]
print("loss curves identical step by step:", identical)

# %%
p.reveal(dup / INTERVAL)

# %% [markdown]
# 为什么能逐位相同？`Trainer.state_dict()` 保存了**所有**会影响后续计算的状态：
#
# | 状态 | 不保存，恢复后哪里和不中断时不同 |
# |---|---|
# | 优化器 (AdamW 的一阶/二阶矩、步数) | 矩从零重新累积，恢复后几步的更新量不同 |
# | 学习率调度器 (`last_epoch`) | 学习率回到 warmup 的起点 |
# | GradScaler 的 scale (fp16) | scale 回到初始值，要重新找合适的大小 |
# | RNG（python、numpy、torch CPU/CUDA） | dropout、采样用的随机数不同 |
# | 数据位置 (`batches_consumed`) | 从头读数据：已经训练过的批次又读一遍 |
#
# 本课只演示了全部都存的情形；漏掉其中几项时曲线怎样偏离，4.1.1 第 3 节实测，ex411 的评分器逐项检查。
# 这些都是 HF Trainer、accelerate、torchtitan、Lightning 的 issue 里真实出现过的坑（例如 HF transformers #33336、accelerate #2016、torchtitan #809、Lightning #10766）。
# 测试 `tests/reliability/test_kill_resume.py` 在 24 个随机位置（训练步中间、保存过程中间）杀掉进程，每次都要求逐位相同。

# %% [markdown]
# ## 3. 保存过程中被杀怎么办：原子保存 (atomic save)
#
# 在磁盘上，一个检查点是一个目录：`checkpoints/step_00000100/state.pt` + `COMPLETE.json`（大小和 SHA-256，**最后**写）。
# 保存顺序：写 `state.pt` 到临时目录并 fsync → 写完成标记 `COMPLETE.json` 并 fsync（连同目录）→ 原子 rename 成正式目录 → fsync 父目录 → 最后才轮换删除最旧的。
# 任何时刻被杀，磁盘上要么是旧的那一组检查点，要么多一个完整的新检查点。我们用测试用的故障注入 (fault injection) 演示：
# 在第 `2 × INTERVAL` 步的保存写到一半时杀掉进程，再用同一条命令恢复。

# %%
from course_lib.faults import FAULT_ENV, SAVE_PHASES
print("fault points inside a save:", SAVE_PHASES)
torn = base / "torn"
fault = {FAULT_ENV: f"save_partial@{2 * INTERVAL}"}   # half of state.pt on disk, then SIGKILL
r = run(train_cmd(torn), torn, env=fault)
m = CheckpointManager(torn, verbose=False)
print("exit code", r.returncode, "| complete checkpoints:", [s for s, _ in m.list_complete()],
      "| leftover temp dirs:", sorted(d.name for d in m.dir.glob(".tmp-*")))
with watch_steps(torn, STEPS, "same command again"):
    r = run(train_cmd(torn), torn)          # no fault this time
assert r.returncode == 0, r.tail(20)
print("\n".join(line for line in r.output.splitlines() if "resumed" in line))
print("leftover temp dirs after the resume:", sorted(d.name for d in m.dir.glob(".tmp-*")),
      "| complete checkpoints:", [s for s, _ in m.list_complete()])

# %% [markdown]
# 恢复时只认有完成标记的检查点：半截的 `.tmp-*` 目录被忽略，训练从最后一个完整的检查点继续，
# 之后第一次保存轮换旧检查点时把它删掉（上面两行输出）。

# %% [markdown]
# ## 4. 坏文件：清楚的错误 + 回退到上一个好的
#
# 截断 (truncated)、0 字节、位翻转 (bit flip)、别人的文件 (foreign)、恶意 pickle：每一种都得到一条写明**文件名和问题**的错误；
# 自动恢复跳过它，用上一个好的。下面演示位翻转和恶意 pickle 两种；五种全部由 `tests/reliability/test_bad_checkpoints.py` 检查。（模型配置不同则是硬错误 `ConfigMismatchError`：那是另一个实验的目录，不能覆盖。）

# %%
mgr = CheckpointManager(killed, verbose=False)
newest = mgr.latest()
data = bytearray((newest / "state.pt").read_bytes())
data[len(data) // 2] ^= 0x01                        # flip one bit
(newest / "state.pt").write_bytes(bytes(data))
try:
    mgr.load(newest)
except CheckpointError as e:
    print("error:", e)
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    state, folder = mgr.load_latest()
print("fell back to:", folder.name, "| warning:", str(w[0].message)[:100], "...")

# %% [markdown]
# 完整的 pickle 加载（`torch.load(..., weights_only=False)`，torch 2.6 之前的默认）会执行文件里的代码。
# 我们只用 `weights_only=True`（`safe_torch_load`）：

# %%
class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {base / 'PWNED'}",))

torch.save({"model": {}, "x": Evil()}, base / "evil.pt")
try:
    safe_torch_load(base / "evil.pt")
except CheckpointError as e:
    print(str(e)[:160], "...")
print("payload ran:", (base / "PWNED").exists())

# %% [markdown]
# ## 小结
# - 检查点 = 继续训练所需的**全部**状态，不只是权重；RNG 和数据位置也是状态。
# - 原子保存：先写临时目录、最后写完成标记、再改名（顺序见第 3 节）；没有完成标记的目录一律不算，被杀后照常恢复。
# - 只用 `weights_only=True` 加载；坏文件给出清楚的错误并回退。
# - 保存要花时间：`bench/checkpoint_overhead.py` 测量默认间隔下保存时间占训练时间的比例（`make bench`，结果见 BENCHMARKS.md）。
#
# ## 练习
# 热身：打开 `exercises/ex401_checkpoint.py`，实现 `save_checkpoint` 和 `load_checkpoint`（只有模型、优化器和
# iteration）。它还不是完整的恢复：scheduler、RNG、数据位置都没存。完整的那一版是 4.1.1 的综合练习
# `exercises/ex411_train_script.py`：你自己写整个训练脚本，评分器会真的把它杀掉再恢复。
# 卡住时运行 `hint("4.0.1")`，每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("4.0.1") when stuck
check("4.0.1");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.1")   # 预测题在第 1 节的实验之前已经问过

# %% [markdown]
# ## 下一步
# - 在终端里自己试：运行 `python -m course_lib.train --out-dir runs/try`，中途 Ctrl-C 或 `kill -9`，再运行同一条命令。
# - 4.0.2：学习率预热 (warmup)。
