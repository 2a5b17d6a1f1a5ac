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
# # 4.1.6 · DDP 之后：FSDP2、分片检查点与换卡数恢复
#
# **学习目标**
# - 说清楚 DDP 与 FSDP（ZeRO-3 风格的全分片数据并行，Fully Sharded Data Parallel）下**每个 rank 持有什么**：
#   用估算公式算出参数、梯度、优化器状态的字节数，再用 1 个和 2 个真实进程测量，两者逐字节相同；
# - 知道 FSDP 多出来的集合通信 (collective)：前向和反向的 **all-gather**、梯度的 **reduce-scatter**，对比 DDP 的
#   **all-reduce**，并按公式算出每步每个 rank 发出的字节数，再在 torch.profiler 的记录里数一遍；
# - 用课程同一条 torchrun 命令加 `--strategy fsdp` 训练 2 个 rank，看分片检查点 (sharded checkpoint) 里每个 rank 写了什么、
#   完成标记 (completion marker) 为什么最后写；然后**只用 1 个进程**接着训练（重新分片，resharding），损失曲线接得上、
#   样本一个不多一个不少；最后导出成 4.2.1 的推理产物；
# - 知道什么时候选 DDP、FSDP、FSDP + 激活检查点 (activation checkpointing)，以及这台只有 CPU 的机器上的实验**证明不了什么**。
#
# **前置知识**：4.0.5（显存估算），4.1.1（检查点管理），4.1.2（DDP 与 torchrun）。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 45 分钟。
#
# > 和 4.1.2 一样，所有多进程都是子进程 (subprocess)，运行的是 `course_lib` 里的函数，不是 notebook 里定义的函数。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import json
import os
import shutil

import torch

from course_lib.checkpoint import ShardedCheckpointManager, safe_torch_load
from course_lib.cli import build_parser, configs_from_args
from course_lib.config import ModelConfig, pick
from course_lib.distributed import run_streaming
from course_lib.export import export_from_run, load_inference
from course_lib.fsdp import load_full_model_state
from course_lib.lab.measure import collectives_table, rank_state_run, rank_state_table
from course_lib.memory import collective_bytes_per_step, count_params, per_rank_state_bytes, shard_rows
from course_lib.monitor import last_per_step, read_jsonl
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes
from course_lib.lab.runner import torchrun_train_command, train_command
from course_lib.train import ConfigMismatchError, Trainer

STEPS = pick(16, 8)
ROOT = runs_dir("4.1.6", fresh=True)
MODEL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
CFG = ModelConfig(**MODEL)
print("CUDA:", torch.cuda.is_available(), "| CPU cores:", os.cpu_count(), "| steps:", STEPS,
      "| model parameters:", count_params(CFG)["total"])

# %% [markdown]
# ## 1. 每个 rank 持有什么：DDP 与 FSDP
#
# 4.0.5 的静态部分：fp32 训练时每个参数有 4 字节权重、4 字节梯度、AdamW 的两个状态 (exp_avg, exp_avg_sq) 共 8 字节，
# 合计约 16 字节/参数。**DDP** 的每个 rank 都有完整的这一份：加卡不省每个 rank 的内存（下表 DDP 的 W=1 与 W=2 两行一样大）。ZeRO 论文把这份状态分到各 rank 上：
#
# | 分片 (shard) 的内容 | 名字 | PyTorch 里 |
# |---|---|---|
# | 只有优化器状态 | ZeRO-1 | `ZeroRedundancyOptimizer` |
# | 优化器状态 + 梯度 | ZeRO-2 | FSDP2 `reshard_after_forward=False`（参数前向后不再释放，近似） |
# | 优化器状态 + 梯度 + 参数 | ZeRO-3 / **FSDP** | FSDP2 `fully_shard`（默认 `reshard_after_forward=True`） |
#
# FSDP2 把每个参数变成一个在第 0 维切分的 `DTensor`：形状 (n0, ...) 的参数，每份 c = ceil(n0 / W) 行，
# rank r 持有 max(0, min(c, n0 − r·c)) 行（与 `torch.chunk` 相同，最后的 rank 可能少拿甚至 0 行）。梯度和 AdamW 状态
# 与本 rank 的分片同形状。不分片的只有 AdamW 每个参数张量一个 4 字节的 `step` 计数器。
#
# `course_lib.memory.per_rank_state_bytes` 按这个规则计算；`course_lib.lab.measure.rank_state_run` 启动 W 个 gloo 进程，
# 分别用 DDP 和 FSDP（`course_lib.fsdp.apply_fsdp`）训练一步，再用 `fsdp.rank_state_bytes` 数每个 rank 真实持有的张量。

# %%
# NBVAL_CHECK_OUTPUT
print("rows per rank (n0 rows over W ranks), next to torch.chunk:")
for n0, w in [(258, 2), (7, 2), (4, 3), (5, 4)]:
    ours = [shard_rows(n0, w, r) for r in range(w)]
    chunk = [c.shape[0] for c in torch.arange(n0).chunk(w)]
    print(f"  n0={n0:>3}, W={w}: {ours}   torch.chunk: {chunk}")

# %%
runs = [rank_state_run(CFG, world_size=w) for w in (1, 2)]
rows = rank_state_table(CFG, runs)
print(f"{'W':>2} {'strategy':>8} {'rank':>4} | {'params':>8} {'grads':>8} {'optimizer':>9} {'total':>8} (KiB, estimate)"
      f" | {'total':>8} (KiB, measured) | equal")
for r in rows:
    print(f"{r['world']:>2} {r['strategy']:>8} {r['rank']:>4} | {r['params_est'] / 1024:8.1f} {r['grads_est'] / 1024:8.1f} "
          f"{r['optimizer_est'] / 1024:9.1f} {r['total_est'] / 1024:8.1f}                 | {r['total_measured'] / 1024:8.1f}"
          f"                  | {r['match']}")
assert all(r["match"] for r in rows), "estimate and measurement differ"
ddp2 = next(r for r in rows if r["world"] == 2 and r["strategy"] == "ddp")
fsdp2 = [r for r in rows if r["world"] == 2 and r["strategy"] == "fsdp"]
shard_ratio = (fsdp2[0]["params_measured"] + fsdp2[0]["optimizer_measured"]) / (ddp2["params_measured"] + ddp2["optimizer_measured"])
print(f"\nFSDP, 2 ranks: rank 0's params + optimizer = {shard_ratio:.4f} x DDP's (1/world = 0.5; "
      "the difference is the unsharded step counters)")

# %% [markdown]
# 估算与测量**逐字节相同**（容差 0：公式数的就是张量里的元素）。W=1 时 FSDP 与 DDP 一样；W=2 时 FSDP 每个 rank 的
# 参数 + 优化器状态是 DDP 的 1/2 再多一点点：多出来的是每个 rank 各有一份的 `step` 计数器（每个参数张量 4 字节）。
#
# 这张表里没有的两样东西：
# - **FSDP 临时聚齐的完整参数**：一个 block 计算前，它的参数被 all-gather 成完整的一份，算完（前向后、反向后）再释放；
#   根 (root：embedding、最后的 norm、绑定的输出层) 在前向开始时聚齐，直到反向结束才释放。这是 FSDP 峰值里要加上的一项（下一格算出它）；
# - **DDP 的梯度桶 (bucket)**：默认 `gradient_as_bucket_view=False` 时，all-reduce 用的桶是梯度的第二份副本（PyTorch 文档：
#   设为 True 省下的正是全部梯度的大小）。

# %%
est = per_rank_state_bytes(CFG, 2, "fsdp")
print(f"FSDP, W=2, rank 0: state between steps {est['total'] / 1024:.1f} KiB; while a block runs + "
      f"{est['gathered_unit'] / 1024:.1f} KiB (one whole block) + {est['gathered_root'] / 1024:.1f} KiB (the root, "
      "whole from forward to the end of backward)")
fig, ax = new_axes("Per-rank model state, 2 ranks (measured = estimated)", "", "KiB")
parts = ("params", "grads", "optimizer")
bottom = [0.0, 0.0]
for k in parts:
    vals = [ddp2[f"{k}_measured"] / 1024, fsdp2[0][f"{k}_measured"] / 1024]
    ax.bar(["DDP, each rank", "FSDP, rank 0"], vals, bottom=bottom, label=k)
    bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
ax.bar(["FSDP, rank 0"], [(est["gathered_unit"] + est["gathered_root"]) / 1024], bottom=bottom, alpha=0.35,
       hatch="//", label="transient: gathered block + root")
ax.legend();

# %% [markdown]
# 对这个只有 2.7 万参数的模型，「临时聚齐」的那部分（上一行打印的一个 block + 根）比这个 rank 分到的参数分片（表里 FSDP 的 params
# 一栏）还大：embedding (258 × 32) 占了参数的三分之一，而根在整个前向和反向期间都是完整的。按同样的公式，模型越大、层越多，
# 单个 block 和根相对全部参数就越小，FSDP 省下的比例就越接近 1 − 1/W（本课没有测大模型：「下一步」里有一个让你自己测的改法）。
#
# ## 2. FSDP 多了哪些集合通信，代价多大
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.6", "fsdp_vs_ddp_traffic")

# %% [markdown]
# | | DDP | FSDP（`reshard_after_forward=True`） |
# |---|---|---|
# | 前向 | 只广播 buffer（`broadcast_buffers=True`，这里是很小的 RoPE 表） | 每个 block 一次 **all-gather**（根一次） |
# | 反向 | 梯度按桶 **all-reduce**（求平均） | 每个 block 再 **all-gather** 一次；梯度 **reduce-scatter**：每个 rank 只收到自己分片的和 |
# | 优化器 | 每个 rank 更新完整参数 | 每个 rank 只更新自己的分片 |
#
# 每个 rank 发出的字节数（ring 算法，S 是张量的总字节数）：all-gather 和 reduce-scatter 各是 (W−1)/W · S，
# all-reduce 是 2 (W−1)/W · S（它本身就是一次 reduce-scatter 加一次 all-gather）。所以 FSDP 一步大约传 3 份、DDP 传 2 份：
# **用约 1.5 倍的通信换 1/W 的状态内存**。`course_lib.memory.collective_bytes_per_step` 按这个公式计算；
# 下表右边是在 2 个 rank 的一步训练里，用 `torch.profiler` 记录到的 c10d 调用次数和元素个数（rank 0）。

# %%
run2 = runs[1]
print(f"{'strategy':>8} {'collective':>15} | {'calls':>5} {'measured':>8} | {'elements':>8} {'measured':>8} | sent per rank")
for r in collectives_table(CFG, run2):
    calls = "-" if r["calls_formula"] is None else r["calls_formula"]
    print(f"{r['strategy']:>8} {r['collective']:>15} | {calls:>5} {r['calls_measured']:>8} | {r['elements_formula']:>8} "
          f"{r['elements_measured']:>8} | {r['sent_bytes_per_rank'] / 1024:.1f} KiB")
    assert r["elements_formula"] == r["elements_measured"]
ddp_bytes = collective_bytes_per_step(CFG, 2, "ddp")["sent_total"]
fsdp_bytes = collective_bytes_per_step(CFG, 2, "fsdp")["sent_total"]
traffic_ratio = fsdp_bytes / ddp_bytes
print(f"\nbytes sent per rank and step: DDP {ddp_bytes / 1024:.1f} KiB, FSDP {fsdp_bytes / 1024:.1f} KiB "
      f"-> FSDP/DDP = {traffic_ratio:.2f}")
print("gloo's own events in the FSDP step:", run2["fsdp"]["collectives"]["backend"])

# %%
p.reveal(traffic_ratio)

# %% [markdown]
# 调用次数和元素个数都与公式一致：all-gather 5 次（根 1 次，2 个 block 各 2 次），reduce-scatter 3 次（每个单元一次），
# DDP 只有 1 次 all-reduce（这个小模型的全部梯度装得进 DDP 的第一个桶；表里没列的 broadcast 是前向时同步 buffer）。FSDP/DDP 的字节比不到 1.5，因为根只聚齐一次，
# 而这个模型的根很大。
#
# 两点只属于 CPU + gloo：
# - gloo 没有真正的 reduce-scatter：上面 gloo 自己的记录里是 `gloo:all_reduce`，它对整个缓冲区做 all-reduce 再各取一段，
#   实际传的字节比公式多；NCCL 上是真正的 reduce-scatter。
# - gloo 在 CPU 上的**耗时**不代表 GPU 集群：这里没有 NVLink / InfiniBand，也没有通信与计算的重叠 (overlap)。
#   所以本节只数次数和字节，不报时间。
#
# 第 0 维不能整除时，FSDP 把每个分片**补齐 (pad)** 到 c 行再 all-gather：传输的是 c·W 行，比参数本身略多
# （`collective_bytes_per_step` 按补齐后的大小计算，单元测试在 259 行的 embedding 上测过）。补齐的行不属于任何参数，
# `rank_state_bytes` 和练习都不计入。

# %% [markdown]
# ## 3. 真实的 2-rank FSDP 训练和分片检查点
#
# 与 4.1.2 是同一条命令，只多一个 `--strategy fsdp`。每个 rank 仍然读自己的数据分片；不同的是模型状态被分片，
# 检查点也由**每个 rank 各写自己的一片**（`torch.distributed.checkpoint`，DCP）。

# %%
B, ACC = 4, 2
TRAIN = dict(max_steps=STEPS, seq_len=32, batch_size=B, accumulation_steps=ACC, warmup_steps=2, eval_interval=STEPS,
             eval_batches=1, log_interval=1, ckpt_interval=STEPS // 2, device="cpu", seed=7, tensorboard=False)
cmd = torchrun_train_command(2, ROOT / "fsdp2", strategy="fsdp", **MODEL, **TRAIN)
print(" ".join(c if not c.startswith("/") else os.path.basename(c) for c in cmd))
rc, lines = run_streaming(cmd, env={"OMP_NUM_THREADS": "1"}, timeout_s=600, prefix_filter=("[train]", "step "))
assert rc == 0, "\n".join(lines[-30:])

# %%
mgr = ShardedCheckpointManager(ROOT / "fsdp2", verbose=False)
mid = mgr.path_for(STEPS // 2)
files = sorted(mid.iterdir(), key=lambda p: p.stat().st_mtime_ns)
print(f"{mid.name}/  (oldest first)")
for p in files:
    print(f"  {p.name:<16} {p.stat().st_size:>8} bytes")
marker = json.loads((mid / "COMPLETE.json").read_text())
print("marker lists:", sorted(marker["files"]), "| world_size:", marker["world_size"])
assert files[-1].name == "COMPLETE.json" or files[-1].stat().st_mtime_ns == (mid / "COMPLETE.json").stat().st_mtime_ns
assert set(marker["files"]) == {p.name for p in files} - {"COMPLETE.json"}

# %% [markdown]
# - `__0_0.distcp`、`__1_0.distcp`：rank 0 和 rank 1 各自的模型 + 优化器分片，两个进程**同时**写；
# - `.metadata`：DCP 的索引，记录每个张量的全局形状，以及哪个文件的哪段字节是它的哪一片；
# - `trainer.pt`：步数、学习率调度器、每个 rank 的 RNG、以全局样本数记的数据位置、配置（rank 0 写）；
# - `COMPLETE.json`：**最后写**，列出其余每个文件的大小和 SHA-256。保存顺序与 4.0.1 第 3 节的单文件检查点相同，
#   多出的一条是：所有 rank 的分片都落盘 (fsync) 之后，rank 0 才写标记并改名；保存到一半被杀，上一个检查点仍然可用
#   （`tests/reliability/test_fsdp_torchrun.py` 在写分片的中途 SIGKILL 一个 rank 验证过）。torchtitan 也是这样做的。
#
# ## 4. 换卡数恢复：2 个 rank 写的检查点，1 个进程接着训练
#
# 把中间那个检查点复制到新目录，用**一个进程**、批次 2×4 = 8 继续训练：每步读的全局样本和 2 个 rank 读的完全相同
# （流式数据集里两个 rank 合起来的第 j 批正是全局顺序的第 j 段）。DCP 加载时，这个进程声明自己要每个张量的**全部**，
# 于是从两个分片文件里各读一段拼起来：这就是重新分片 (resharding)。批次乘以进程数改变时，训练会拒绝恢复并说明该用哪个批次。

# %%
resumed = ROOT / "resumed_1rank"
(resumed / "checkpoints").mkdir(parents=True)
shutil.copytree(mid, resumed / "checkpoints" / mid.name)
one = train_command(resumed, strategy="fsdp", **MODEL, **dict(TRAIN, batch_size=2 * B))
rc, lines1 = run_streaming(one, env={"OMP_NUM_THREADS": "1"}, timeout_s=600, prefix_filter=("[train]", "step "))
assert rc == 0, "\n".join(lines1[-30:])

# %%
ref = {r["step"]: r["loss"] for r in last_per_step(read_jsonl(ROOT / "fsdp2" / "metrics.jsonl"))}
got = {r["step"]: r["loss"] for r in last_per_step(read_jsonl(resumed / "metrics.jsonl"))}
after = [s for s in sorted(got) if s > STEPS // 2]
resume_rel_diff = max(abs(got[s] - ref[s]) / ref[s] for s in after)
print(f"steps {after[0]}..{after[-1]} after resuming on 1 process: max relative loss difference vs the 2-rank run "
      f"= {resume_rel_diff:.1e}")
final = safe_torch_load(ShardedCheckpointManager(resumed, verbose=False).latest() / "trainer.pt")
want_samples = STEPS * ACC * 2 * B
print(f"samples consumed: {final['data']['samples_consumed']} (expected {STEPS} steps x {ACC} micro-steps x 2 x {B} = "
      f"{want_samples}); written by world_size {final['world_size']}")
assert resume_rel_diff < 1e-5 and final["data"]["samples_consumed"] == want_samples

fig, ax = new_axes("2 ranks (FSDP) -> resumed on 1 process", "optimizer step", "training loss (nats/token)")
ax.plot(sorted(ref), [ref[s] for s in sorted(ref)], lw=4, alpha=0.4, label="2 ranks, uninterrupted")
ax.plot(after, [got[s] for s in after], "x", label="1 process, from the 2-rank checkpoint")
ax.axvline(STEPS // 2, color="gray", ls="--", label="checkpoint")
ax.legend();

# %% [markdown]
# 如果换卡数时忘了改批次（1 个进程仍用 `--batch-size 4`），每步读的样本就和原来不同，损失曲线会悄悄变样。
# 训练在加载时就拒绝，并说出该用哪个批次（这里在 notebook 里构造同一条命令的 `Trainer`，它在读检查点时就停下）：

# %%
wrong = ROOT / "wrong_batch"
(wrong / "checkpoints").mkdir(parents=True)
shutil.copytree(mid, wrong / "checkpoints" / mid.name)
mc, tc = configs_from_args(build_parser().parse_args(train_command(wrong, strategy="fsdp", **MODEL, **TRAIN)[3:]))
try:
    Trainer(mc, tc, console=False)
    refused = False
except ConfigMismatchError as e:
    refused = True
    print("refused:", str(e).split(": ", 1)[1])
assert refused

# %% [markdown]
# 恢复后的损失与不中断的 2-rank 运行在每一步都相同（只差浮点加法的顺序，相对误差远小于 1e-5），样本计数也正好。
# 反方向（1 个进程写、2 个 rank 读）在 `tests/reliability/test_fsdp_torchrun.py` 里测试。
# 两次运行最后的 `eval_loss` 不同，这不是恢复的问题：评估读验证集开头的 `eval_batches` 个大小为 `batch_size` 的批次，
# 批次从 4 变成 8，评估的样本也就变了。要比较的是训练损失。
#
# ## 5. 从分片检查点导出推理产物
#
# 推理不需要进程组。`export_from_run` 在一个进程里用 DCP 把各分片读进一个普通的完整模型，再写成 4.2.1 的
# `model.safetensors` + `config.json`（命令行：`python -m course_lib.export RUN_DIR OUT_DIR`）。

# %%
art = ROOT / "artifact"
export_from_run(ROOT / "fsdp2", art)
print(sorted(p.name for p in art.iterdir()))
model, tokenizer, meta = load_inference(art)
full, _ = load_full_model_state(mgr.latest())
same = all(torch.equal(v, model.state_dict()[k]) for k, v in full.state_dict().items())
print("artefact weights == the checkpoint's shards gathered offline:", same)
assert same

# %% [markdown]
# ## 6. 什么时候选哪一个
#
# | 情况 | 选择 | 在常用框架里 |
# |---|---|---|
# | 模型 + 梯度 + AdamW 状态（约 16 字节/参数）加上激活值放得进一张卡 | **DDP**：通信最少、最简单 | `torchrun` + DDP；HF accelerate 默认的多卡模式 |
# | 放不进：状态太大 | **FSDP**（ZeRO-3）：状态约 1/W，通信约 1.5 倍 | torchtitan `--parallelism.data_parallel_shard_degree`；accelerate `fsdp_config`（`fsdp_version: 2`、`fsdp_reshard_after_forward`） |
# | 状态分完了，激活值仍然太大（长序列、大批次） | **FSDP + 激活检查点**（4.0.5，`TrainConfig.activation_checkpointing`）：反向时重算激活，多约一次前向的计算 | torchtitan `--activation_checkpoint.mode full`/`selective`；accelerate `fsdp_activation_checkpointing: true` |
# | 通信是瓶颈、内存还有余量 | FSDP `reshard_after_forward=False`（ZeRO-2 式）：少一次 all-gather，多占一份参数 | torchtitan 按层设置；accelerate 的 `fsdp_reshard_after_forward: false` |
#
# 先用第 1 节的估算算一遍：DDP 放得下就用 DDP。
#
# 这台只有 CPU 的机器上的实验证明了**内存怎么分、通信调用几次传多少、检查点怎么换卡数恢复**；它证明不了**速度**：
# CPU 上的 gloo 没有 NCCL、NVLink、通信与计算的重叠，小模型的时间全花在进程和调用的开销上，
# 所以本课不给任何 FSDP 比 DDP 快或慢多少的数字。多 GPU 上的吞吐量要在那样的机器上测量。
#
# ## 小结
# - DDP：每个 rank 一整份参数、梯度、优化器状态（约 16 字节/参数），梯度 all-reduce。
# - FSDP（ZeRO-3）：三者都按第 0 维分片，每个 rank 约 1/W（`step` 计数器除外）；代价是每个 block 前向和反向各一次
#   all-gather、梯度一次 reduce-scatter，约 1.5 倍的通信，以及计算时临时聚齐的一个 block 和根。
# - 估算 (`memory.per_rank_state_bytes`) 与 1、2 个进程的测量逐字节相同；通信次数和元素数与 profiler 记录一致。
# - 分片检查点：每个 rank 写自己的分片，`.metadata` 记录全局形状，完成标记最后写；2 个 rank 写的检查点可以在 1 个进程上
#   继续训练，损失和样本计数都接得上；推理产物可以离线从分片导出。
#
# ## 练习
# `exercises/ex416_per_rank_memory.py`：给定模型配置、进程数、策略和 rank，算出这个 rank 持有的参数、梯度、优化器状态字节数。
# 评分测试真的启动 1 个和 2 个 gloo 进程测量（第 0 维不能整除的模型），再检查 3 个 rank 时有一个 rank 分不到行的情况。
# 卡住时运行 `hint("ex416_per_rank_memory")`，每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("ex416_per_rank_memory") when stuck

check("4.1.6")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.6")   # 预测题在第 2 节之前已经问过

# %% [markdown]
# ## 下一步
# - 把第 2 节换成 `rank_state_run(CFG, 2, reshard_after_forward=False)` 和 `collectives_table(..., reshard_after_forward=False)`：
#   all-gather 少了几次？
# - 把 `MODEL` 的 `n_layers` 改成 8：FSDP/DDP 的通信比和「临时聚齐」的比例怎么变？先用公式预测，再测量；
# - 4.2.1 起是推理：第 5 节导出的产物和 DDP 训练导出的完全一样，后面的课程都能直接使用。
