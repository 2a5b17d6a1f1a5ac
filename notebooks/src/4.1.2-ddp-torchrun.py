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
# # 4.1.2 · 数据并行 DDP 与 torchrun（含容错重启）
#
# **学习目标**
# - 用标准方式启动多进程训练：`torchrun --nproc_per_node=N -m course_lib.train`，和单进程 `python -m course_lib.train` 是**同一个入口**；
# - 知道 torchrun 给每个进程的环境变量 (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`)，以及后端 (backend) 怎么选：CPU 上 gloo，GPU 上 nccl（每个进程用 `cuda:LOCAL_RANK`）；
# - 亲眼验证：2 个 rank 的 DDP 训练 k 步后的参数 = 单进程在「合并批次」(combined batch) 上训练的参数；
# - 看到容错 (fault tolerance)：杀掉一个 worker，`torchrun --max-restarts=1` 重启整个进程组，从最新检查点恢复，最终权重与不中断的运行逐位相同。
#
# **前置知识**：4.0.1（检查点与恢复），4.1.1（检查点管理）。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 40 分钟。
#
# > 本节所有多进程都是 `torchrun` 子进程 (subprocess)，运行的是 `course_lib.train` 里的代码，不是 notebook 里定义的函数
# > （notebook 里的函数无法被 spawn 出来的进程导入）。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import os
import re

import torch

from course_lib.checkpoint import CheckpointManager
from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.distributed import run_streaming
from course_lib.monitor import read_jsonl
from course_lib.lab.paths import runs_dir
from course_lib.faults import fault_env
from course_lib.lab.plotting import new_axes
from course_lib.lab.runner import torchrun_train_command
from course_lib.train import ReplayDDPBatches, Trainer

STEPS = pick(40, 8)
ROOT = runs_dir("4.1.2", fresh=True)
print("CUDA:", torch.cuda.is_available(), "| CPU cores:", os.cpu_count(), "| steps:", STEPS)

# %% [markdown]
# ## 1. torchrun 做了什么
#
# `torchrun --nproc_per_node=2 -m course_lib.train ...` 启动 2 个 Python 进程，每个进程的环境变量里有：
#
# | 变量 | 含义 |
# |---|---|
# | `RANK` | 全局编号 0..WORLD_SIZE-1（rank 0 负责写日志和检查点） |
# | `LOCAL_RANK` | 本机上的编号：GPU 上用 `cuda:LOCAL_RANK` |
# | `WORLD_SIZE` | 进程总数 |
# | `MASTER_ADDR` / `MASTER_PORT` | 会合点 (rendezvous)：进程们在这里互相找到对方 |
#
# `course_lib.distributed.setup()` 读取它们，调用 `init_process_group`（CPU 用 gloo，GPU 用 nccl），
# 然后 `Trainer` 用 `DistributedDataParallel` (DDP) 包装模型：每个 rank 在**自己的**数据分片上前向、反向，
# 反向时 DDP 对所有 rank 的梯度做 all-reduce 求平均，于是每个 rank 做的 optimizer step 完全一样，参数始终一致。
#
# 下面是我们要运行的命令（`torchrun` 就是 `python -m torch.distributed.run`；`python -m course_lib.launch` 是带上重启修正的 torchrun，参数相同，见第 4 节）：

# %%
MODEL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=64)
TRAIN = dict(max_steps=STEPS, seq_len=32, batch_size=4, warmup_steps=2, eval_interval=STEPS, eval_batches=1,
             log_interval=max(1, STEPS // 8), ckpt_interval=max(2, STEPS // 4), device="cpu", seed=7, tensorboard=False)

# course_lib.lab.runner turns the keyword arguments into CLI flags (tensorboard=False -> --no-tensorboard)
cmd = torchrun_train_command(2, ROOT / "ddp", **MODEL, **TRAIN)
print(" ".join(c if not c.startswith("/") else os.path.basename(c) for c in cmd))

# %% [markdown]
# ## 2. 启动 2 个进程，把 rank 0 的输出实时显示在这里
#
# `run_streaming` 逐行读取子进程的输出并立刻打印。只有 rank 0 打印 `[train]` 和 `step` 行（其他 rank 安静地训练）；
# torchrun 自己若有提示，也会原样出现（这次运行里它什么也没打印）。`device=cpu`：这台机器没有 GPU 时用 gloo；有 GPU 时去掉 `--device cpu`，
# 同样的命令会自动用 nccl 和 `cuda:LOCAL_RANK`（需要至少 2 块 GPU 才能 `--nproc_per_node=2`）。

# %%
rc, lines = run_streaming(cmd, env={"OMP_NUM_THREADS": "1"}, timeout_s=600,
                          prefix_filter=None)
assert rc == 0, "\n".join(lines[-30:])

# %% [markdown]
# ## 3. 等价性：DDP 的 2 个 rank = 一个进程看「合并批次」
#
# 流式数据集 (streaming dataset) 按 rank 分片：第 j 步 rank 0 读 `perm[0::2]` 里的第 j 批，rank 1 读 `perm[1::2]` 里的第 j 批。
# DDP 平均两个 rank 的梯度 = 在两批**拼接**起来的大批次上求平均损失的梯度。`ReplayDDPBatches` 让单进程每一步都读这个拼接批次。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.2", "ddp_max_abs_diff")

# %%
# the same configs the CLI builds from those flags: ModelConfig.small / TrainConfig.default + overrides
mc, tc = ModelConfig.small(**MODEL), TrainConfig.default(**TRAIN, out_dir=str(ROOT / "single"))
single = Trainer(mc, tc, callbacks=[ReplayDDPBatches(world_size=2)], console=False)
single.fit()
ddp_state, _ = CheckpointManager(ROOT / "ddp").load_latest()
diff = max((single.model.state_dict()[k] - v).abs().max().item() for k, v in ddp_state["model"].items())
init = Trainer(mc, tc.replace(out_dir=str(ROOT / "init")), console=False, save_checkpoints=False).model.state_dict()
moved = max((init[k] - v).abs().max().item() for k, v in ddp_state["model"].items())
print(f"after {STEPS} steps: max |DDP - single process| = {diff:.2e}   (parameters moved by up to {moved:.2e})")
print("equal within atol 2e-5:", diff < 2e-5)

# %%
p.reveal(diff)

# %% [markdown]
# 两边只差浮点加法的顺序（all-reduce 先在各 rank 上求和，再跨 rank 相加），浮点加法不满足结合律，
# 所以比较用 `allclose`（测试里是 atol 2e-5），而不是逐位相等。

# %%
ddp_log = [r for r in read_jsonl(ROOT / "ddp" / "metrics.jsonl") if "loss" in r]
fig, ax = new_axes("2-rank DDP vs one process on the combined batch", "optimizer step", "training loss (nats/token)")
ax.plot([h["step"] for h in single.history], [h["loss"] for h in single.history], label="1 process, combined batch")
ax.plot([r["step"] for r in ddp_log], [r["loss"] for r in ddp_log], "o", label="torchrun, 2 ranks (rank 0 log)")
ax.legend();

# %% [markdown]
# 两条曲线重合：DDP 不改变算法，只把一个大批次分给了多个进程。所以「扩大到 N 个 GPU」在数学上等于
# 把批次放大 N 倍（学习率要不要跟着调，是另一个问题）。
#
# ### 保存时的 `module.` 前缀
# `DistributedDataParallel(model)` 把模型包在 `.module` 里，所以**包装后**的 `state_dict()` 每个键都多了 `module.` 前缀；
# 直接保存它，之后不用 DDP 加载时就会报 missing / unexpected keys。做法：保存 `ddp_model.module.state_dict()`（或者像
# `course_lib` 的 `Trainer` 那样一直持有未包装的 `self.model`，只把 `self.ddp` 用于前向和反向）。已经存成带前缀的文件，
# 加载前用 `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, "module.")` 去掉前缀。
# 下面在 notebook 里起一个只有 1 个进程的 gloo 进程组（`HashStore`，不开端口），亲眼看看前缀：

# %%
import torch.distributed as dist
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DistributedDataParallel

from course_lib.model import DIYModel

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    raw = DIYModel(mc)
    wrapped = DistributedDataParallel(raw)
    keys = list(wrapped.state_dict())
    print("wrapped:  ", keys[0], "...", len(keys), "keys")
    print("unwrapped:", list(wrapped.module.state_dict())[0])
    sd = dict(wrapped.state_dict())
    consume_prefix_in_state_dict_if_present(sd, "module.")
    print("prefix removed, loads into a plain model:", DIYModel(mc).load_state_dict(sd))
    assert keys[0].startswith("module.")
finally:
    dist.destroy_process_group()

# %% [markdown]
# ## 4. 容错：杀掉一个 worker，torchrun 重启整个进程组
#
# 真实集群里进程会死：显存溢出 (OOM)、节点故障、被抢占。`torchrun --max-restarts=1` 的做法是：
# 任何一个 worker 退出失败，就**终止所有 worker，重新启动整个组**（不是只重启死掉的那个）。
# 重新启动的进程不知道自己是「第二次」：`Trainer` 启动时总会在 `out_dir` 里找最新的完整检查点并从那里继续 (`resume=True`)。
#
# 演示用的故障注入 (fault injection)：`fault_env("after_step", k, rank=1, once=标记文件)` 生成环境变量
# `COURSE_FAULT=after_step@k:1` 和 `COURSE_FAULT_ONCE`，让 rank 1 在第 k 步之后给自己发 `SIGKILL`
# （只发生一次：先写标记文件）。另外，torchrun 自己的进程要带 `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`：
# 否则重启后的 worker 有时会读到上一轮的旧地址而连接失败（pytorch #135712）。`torchrun_command` 生成的命令用
# `python -m course_lib.launch`（参数与 torchrun 完全相同，它先设好这个变量再运行 torchrun），手敲命令时也用它。
#
# 下面输出里的报错行是**预期中的**，正是要演示的故障：torchrun 报告 rank 1 `failed (exitcode: -9)`（-9 = SIGKILL）；
# rank 0 若在 all-reduce 时先发现对端断开，还会打印 `RuntimeError: ... Connection reset by peer`。
# 之后 torchrun 重启整个组，新进程从检查点继续（`resumed from ...`），最后退出码是 0。报错行在日志之后单独摘出一小段。

# %%
marker = ROOT / "fault.marker"
kill_at = TRAIN["ckpt_interval"] + 1
rc, lines = run_streaming(torchrun_train_command(2, ROOT / "faulty", max_restarts=1, **MODEL, **TRAIN),
                          env={"OMP_NUM_THREADS": "1", **fault_env("after_step", kill_at, rank=1, once=marker)},
                          timeout_s=600, prefix_filter=("[train]", "[fault]", "step "), max_width=140)
print("\nexpected errors from the kill (excerpt):")
for ln in lines:
    failed = re.search(r"failed \(exitcode: -?\d+\) local_rank: \d+", ln)
    if failed:
        print("  torchrun:", failed.group(0))
    elif "RuntimeError" in ln:
        print("  rank 0:   RuntimeError:", ln.rsplit("] ", 1)[-1][:65], "...")   # the message, without gloo's source path
print("exit code:", rc, "| fault happened:", marker.exists())
print([ln for ln in lines if "resumed from" in ln])

# %%
faulty, _ = CheckpointManager(ROOT / "faulty").load_latest()
same = all(torch.equal(v, faulty["model"][k]) for k, v in ddp_state["model"].items())
print(f"killed after step {kill_at}, restarted, resumed from the checkpoint at step {TRAIN['ckpt_interval']}:")
print("final weights bitwise equal to the uninterrupted DDP run:", same)

# %%
log = [r for r in read_jsonl(ROOT / "faulty" / "metrics.jsonl") if "loss" in r]
fig, ax = new_axes("Kill a worker, torchrun restarts, training resumes", "optimizer step", "training loss (nats/token)")
ax.plot([r["step"] for r in ddp_log], [r["loss"] for r in ddp_log], lw=4, alpha=0.4, label="uninterrupted DDP")
ax.plot([r["step"] for r in log], [r["loss"] for r in log], "x", label="with a kill + restart (both attempts' logs)")
ax.axvline(kill_at, color="red", ls="--", label=f"rank 1 killed after step {kill_at}")
ax.legend();

# %% [markdown]
# rank 1 在第 `ckpt_interval+1` 步之后被杀，重启后从第 `ckpt_interval` 步的检查点开始，第 `ckpt_interval+1` 步又被算了一次
# （`log_interval` 是 5，那一步没有记进日志）。之后记录的每一个 loss 都与不中断的运行相同（图里的叉落在粗线上；两段日志
# 打印的数字逐位一样），上面还打印了最终权重与不中断的 DDP 运行逐位相同——恢复是精确的。
#
# ## 5. 多机 (multi-node)：同一个命令，多加几个参数
#
# 两台机器各跑一条命令（`--node-rank` 分别是 0 和 1）：
#
# ```bash
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --master-addr=10.0.0.1 --master-port=29500 -m course_lib.train ...
# torchrun --nnodes=2 --node-rank=1 --nproc-per-node=8 --master-addr=10.0.0.1 --master-port=29500 -m course_lib.train ...
# # 或弹性 (elastic) 形式：--rdzv-backend=c10d --rdzv-endpoint=10.0.0.1:29500 --rdzv-id=job42
# ```
#
# 测试 `tests/reliability/test_ddp_torchrun.py::test_two_nodes_on_loopback` 在一台机器上用 127.0.0.1 启动这样的两个「节点」，
# 并验证结果与单节点 2 进程逐位相同。端口由操作系统分配 (`free_port()`)，从不写死。
#
# **在 GPU 上**：去掉 `--device cpu`，后端自动变成 nccl、每个进程绑定 `cuda:LOCAL_RANK`。
# 本节的数字都是在 CPU + gloo 上测得的；构建这个 notebook 的机器没有 GPU（第一格打印了 `CUDA: False`），nccl 路径没有在 GPU 上运行过（代码路径相同，见 `course_lib/distributed.py`）。
#
# ## 小结
# - 一个入口：`python -m course_lib.train`（单进程）和 `torchrun ... -m course_lib.train`（DDP）；rank/world 来自环境变量。
# - DDP = 每个 rank 一份数据分片 + 反向时梯度 all-reduce 平均；k 步后的参数与单进程在合并批次上的参数一致（只差浮点顺序）。
# - 只有 rank 0 写日志和检查点；所有 rank 都从检查点恢复（包括每个 rank 自己的 RNG 状态）。
# - `--max-restarts` 重启的是**整个组**，脚本必须自己找到并加载最新检查点。
#
# ## 练习
# 1. `exercises/ex412_ddp_setup.py`：从环境变量建立进程组、建 `DistributedSampler` 和 DataLoader、用 DDP 包装模型。
#    评分测试会真的启动 2 个 gloo 进程运行你的函数。
# 2. **进阶（选做）** `exercises/ex412_ddp_by_hand.py`：不用 DDP，自己同步梯度。先在 backward 之后对每个梯度
#    `all_reduce` 求平均；再改成钩子 (hook)：每个参数的梯度一算完就同步。评分器在 2 个 gloo 进程里把结果与
#    `DistributedDataParallel` 比较。
#
#    这正是 DDP 在底层做的事：构造时把 rank 0 的参数广播给所有进程，backward 时对梯度做 all-reduce 求平均，
#    于是每个进程各自 `step()` 之后参数仍然一致。DDP 多做的是 **分桶 (bucketing)**：把许多小梯度按反向的顺序装进
#    约 25 MB 的桶，一个桶满了就发起一次 all-reduce，与还在进行的反向计算重叠。逐参数的钩子也能重叠，但每个参数一次
#    通信，小张量多时每次通信的固定延迟会一次次累加；一次性在 backward 之后同步则完全不重叠。
#
# 卡住时运行 `hint("ex412_ddp_by_hand")`，每次多给一层提示。

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("ex412_ddp_by_hand") when stuck

check("4.1.2")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.2")   # 预测题在第 3 节的比较之前已经问过

# %% [markdown]
# ## 下一步
# - 4.1.3：数据加载 (DataLoader workers、pin_memory、prefetch) 到底有多快，怎么在 worker × rank 之间分片；
# - 在有 2 块以上 GPU 的机器上，去掉 `--device cpu` 重跑第 2 节，看 nccl 的速度；
# - 改 `kill_at` 到检查点之前的某一步，预测恢复后会从哪一步开始。
