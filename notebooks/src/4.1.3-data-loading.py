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
# # 4.1.3 · 数据加载 (data loading)：DataLoader、worker、Sampler 与分片
#
# **学习目标**
# - 能说明 DDP 下 DataLoader 与 Sampler 的配合方式：map-style 数据集 + `DistributedSampler`（每个 epoch `set_epoch`），
#   以及流式数据集 (IterableDataset) 自己按 rank 和 worker 分片；
# - 亲眼看到每个样本在一个 epoch 里**恰好被读一次**（跨 worker × rank），以及 `DistributedSampler(drop_last=False)` 用重复样本补齐的陷阱；
# - 测量输入管线的吞吐 (samples/s)：`num_workers`、`prefetch_factor`、`pin_memory`（仅 CUDA）、流式 vs map-style，并知道怎样解读自己机器上的数字。
#
# **前置知识**：PyTorch `Dataset`/`DataLoader`，4.1.2（DDP）。
#
# **预计时间**：运行{{run_time}}，阅读约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import os

import torch
from torch.utils.data import DistributedSampler

from course_lib.config import pick, quick_mode
from course_lib.data import TokenChunkDataset, load_corpus, tokenize_corpus
from course_lib.dataloading import make_loader, measure_throughput
from course_lib.lab.plotting import new_axes, print_table

print("CPU cores:", os.cpu_count(), "| CUDA:", torch.cuda.is_available())

# %% [markdown]
# ## 1. 谁负责「不重复」？
#
# **map-style**（`ds[i]`）：`DistributedSampler(ds, num_replicas=W, rank=r, seed=s)` 用 `seed + epoch` 打乱全部索引，
# rank r 取 `perm[r::W]`。DataLoader 再把这些索引分成批次，**轮流**派给它的 worker 进程——所以 worker 之间也不重复。
# 每个 epoch 开始前必须 `sampler.set_epoch(epoch)`，否则每个 epoch 顺序相同。
#
# **流式**（`IterableDataset`）：DataLoader 不知道数据有多少，每个 worker 都会从头迭代同一个数据集对象——
# 所以数据集自己必须按 `get_worker_info()` 和 rank 分片。`course_lib.data.StreamingTokenDataset` 就是这样做的。
#
# 用「token 值 = 位置」的假数据，我们能从每个样本的第一个 token 认出它的编号：

# %%
T, B = 10, 4
TOK = torch.arange(4021, dtype=torch.int32)   # 402 samples
N = (len(TOK) - 1) // T
rows = []
for kind in ("stream", "map"):
    for world, workers in [(1, 2), (2, 2), (3, 2)]:
        seen = []
        for rank in range(world):
            loader = make_loader(kind, TOK, T, B, num_workers=workers, seed=1, rank=rank, world_size=world)
            for i, (x, _) in enumerate(loader):
                if i == (N // world) // B:
                    break
                seen += (x[:, 0] // T).tolist()
        rows.append({"dataset": kind, "ranks": world, "workers/rank": workers, "samples read": len(seen),
                     "distinct": len(set(seen)), "duplicates": len(seen) - len(set(seen)), "left out (drop_last)": N - len(seen)})
# NBVAL_CHECK_OUTPUT
print_table(rows)

# %% [markdown]
# 重复数为 0；被留下的样本少于 `ranks × batch`（最后凑不满一批的部分；每个 epoch 换一批被留下，因为顺序每 epoch 不同）。
#
# **陷阱**：`DistributedSampler` 默认 `drop_last=False`：样本数不能被 rank 数整除时，它**重复**开头的样本来补齐，让每个 rank 一样长：

# %%
ds = TokenChunkDataset(TOK, T)
for drop_last in (False, True):
    idx = [i for r in range(4) for i in DistributedSampler(ds, num_replicas=4, rank=r, seed=0, drop_last=drop_last)]
    # NBVAL_CHECK_OUTPUT
    print(f"drop_last={drop_last}: {len(idx)} indices over 4 ranks, {len(set(idx))} distinct, {len(idx) - len(set(idx))} repeated")
s = DistributedSampler(ds, num_replicas=2, rank=0, seed=0)
e0 = list(s)[:6]; e0b = list(s)[:6]; s.set_epoch(1); e1 = list(s)[:6]
print("epoch 0:", e0, "| again without set_epoch:", e0b, "| after set_epoch(1):", e1)

# %% [markdown]
# ## 2. 吞吐：输入管线本身有多快？
#
# `measure_throughput` 只迭代 DataLoader（不跑模型），报告稳态 samples/s 和拿到第一批的时间（worker 启动开销）。
# 每个设置都和**同一数据集、同一次运行里** `num_workers=0` 的结果相比。最后两行给 map-style 数据集加了每个样本 2 ms 的
# 等待（模拟网络盘或解码），这是 worker 真正能帮上忙的情形。`pin_memory` 只在有 CUDA 时测（它加速的是主机→GPU 的拷贝）。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.3", "delay_speedup")

# %%
tokens = tokenize_corpus(load_corpus("stdlib"))
NB = pick(30, 6)
settings = [("stream", 0, None, 0), ("stream", 1, 2, 0), ("stream", 2, 2, 0), ("stream", 2, 4, 0),
            ("map", 0, None, 0), ("map", 1, 2, 0), ("map", 2, 2, 0), ("map", 2, 4, 0),
            ("map", 0, None, 2.0), ("map", 2, 2, 2.0)]
if torch.cuda.is_available():
    settings += [("map", 2, 2, "pin")]
res, base = [], {}
for kind, w, pf, delay in settings:
    pin = delay == "pin"
    d = 0.0 if pin else delay
    loader = make_loader(kind, tokens, 128, 16, num_workers=w, prefetch_factor=pf, pin_memory=pin, delay_ms=d)
    r = measure_throughput(loader, n_batches=NB if not d else max(3, NB // 3))
    if w == 0:
        base[(kind, d)] = r["samples_per_s"]
    name = f"{kind} w={w}" + (f" pf={pf}" if pf else "") + (" pin" if pin else "") + (f" +{d:g}ms" if d else "")
    res.append({"setting": name, "samples/s": round(r["samples_per_s"]), "vs workers=0": round(r["samples_per_s"] / base[(kind, d)], 2),
                "first batch (s)": round(r["first_batch_s"], 3)})
print_table(res)
ratio = {r["setting"]: r["vs workers=0"] for r in res}
print(f"in-memory map, 2 workers: x{ratio['map w=2 pf=2']:.2f} of workers=0 "
      f"({'faster' if ratio['map w=2 pf=2'] > 1 else 'not faster'} here: slicing a tensor leaves nothing to overlap)")
print(f"2 ms wait per sample, 2 workers: x{ratio['map w=2 pf=2 +2ms']:.2f} of workers=0 (the waiting overlaps)")
if not quick_mode():   # a handful of batches in quick mode is mostly worker start-up
    assert ratio["map w=2 pf=2 +2ms"] > 1.0, res
fig, ax = new_axes("Input pipeline throughput vs num_workers=0 (same run)", "setting", "speed-up vs num_workers=0 (x)")
ax.bar(range(len(res)), [r["vs workers=0"] for r in res], color=["C0" if "stream" in r["setting"] else "C1" for r in res])
ax.axhline(1.0, color="k", lw=0.8)
ax.set_xticks(range(len(res)), [r["setting"] for r in res], rotation=40, ha="right", fontsize=8);

# %%
p.reveal(ratio["map w=2 pf=2 +2ms"])

# %% [markdown]
# **怎样读这些数字**（表下打印的两行是这次测到的方向）
# - map-style 数据集是已经分好词的内存张量，取一个样本只是切片：worker 进程的启动和进程间传输（pickle + 共享内存）
#   比「读数据」本身还贵，所以表里 map 的 `w>0` 几行都比 `w=0` 慢（比例 < 1）。这不是 bug：这种数据不需要 worker。
#   流式数据集在主进程里每个样本要做的事更多（它的 `w=0` 比 map 的慢得多）：这次 2 个 worker 比 `w=0` 快，1 个 worker 反而更慢。
#   worker 有没有用，要看每个样本要花多少功夫。
# - 当取样本要**等待**（磁盘、网络、解码）时，worker 能把等待重叠起来：`+2ms` 那两行的比例 > 1（完整模式下断言了）。
# - `prefetch_factor` 是每个 worker 预先备好的批次数：队列深一点能垫平生产速度的波动，但不能让 worker 本身生产得更快；
#   这次 pf=4 对流式快一些、对 map 慢一些，方向不一致。
# - `pin_memory=True` 让主机→GPU 的拷贝可以异步 (`non_blocking=True`)，只在 CUDA 上有意义；构建这个 notebook 的机器没有 GPU（第一格打印了 `CUDA: False`），那一行没有测。
# - 真正的判据：训练一步的时间里，等数据占多少？如果 GPU 在等数据（利用率低），再加 worker；否则保持 `num_workers=0` 最简单。
#
# `bench/data_loading.py` 打印同一张表（带 CUDA 时加 pin_memory 一行）。
#
# ## 小结
# - map-style：`DistributedSampler` 分 rank（每 epoch `set_epoch`，`drop_last=True` 避免重复补齐），DataLoader 把批次轮流派给 worker。
# - 流式：数据集自己按 rank 和 worker 分片；`StreamingTokenDataset` 还能从保存的位置恢复。
# - worker 不是越多越好：先测量。
#
# ## 练习
# 打开 `exercises/ex413_sharded_stream.py`，写一个流式数据集 `ShardedStream`（`IterableDataset`）：
# 按 rank × DataLoader worker 切分，每个 epoch 每个样本恰好一次，训练循环看到的顺序与 worker 数无关，
# 并能从 epoch 中间保存的位置精确地继续。评分器用真实的 DataLoader 在 1–3 个 rank × 0–2 个 worker 上检查。
# 卡住时运行 `hint("4.1.3")`，每次多给一层提示。（采样器 `DistributedSampler` 的部分在 4.1.2 的 ex412 里评分。）

# %%
from course_lib.lab.grading import check
from course_lib.lab.hints import hint  # noqa: F401  hint("4.1.3") when stuck

check("4.1.3")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.3")   # 预测题在第 2 节的测量之前已经问过

# %% [markdown]
# ## 下一步
# - 4.1.4：梯度累积；
# - 试试 `python -m course_lib.train --loader map --num-workers 2`，与默认的流式数据集对比 tokens/s。
