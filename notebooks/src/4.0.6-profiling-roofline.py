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
# # 4.0.6 · 时间花在哪里：profiling 与 roofline
#
# **学习目标**：会用 `torch.profiler` 看一个训练步 / decode 步的时间花在哪些算子上（算子表、能在 Perfetto 里打开的
# trace、`record_shapes`）；会做一个不骗人的基准测试 (benchmark)：预热、GPU 上同步、固定线程数、交替轮次、中位数和范围、
# 进程时间与墙钟时间；量出这台机器的两个极限（内存带宽、峰值算力），画出 roofline，把训练步、prefill、不同 batch 的 decode、
# int8/int4 decode 放上去，看懂为什么 batch 和量化帮 decode 而不帮 prefill；从 profile 算出 MFU 和 MBU。
#
# **前置知识**：4.0.4（训练日志）、4.0.5（按字节数估算）；矩阵乘法的 FLOPs = 2 × m × n × k。
# **预计时间**：运行{{run_time}}，阅读 + 练习约 40 分钟。
#
# 本课所有数字都在这台机器上现场测得。CPU 是和别的程序共用的：下面第一格打印当前负载，数字偏低、范围偏宽时先看它。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
import os

import torch

from course_lib.lab.threads import setup_threads

choice = setup_threads()
load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
print(f"1 分钟平均负载 (load average) = {load1:.1f}，可用核 {choice.cores}：负载超过核数时，本课的计时都受别的程序挤占")

# %%
from course_lib import roofline
from course_lib.config import ModelConfig, pick
from course_lib.lab import profiling
from course_lib.lab.measure import as_model, interleaved_rounds, speed_config
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import print_table
from course_lib.quantize import quantize_model

cfg = speed_config()                      # d512 x 8 层（quick 模式 d256 x 4）
model = as_model(cfg)
N = model.num_parameters()
print(f"speed model: {N / 1e6:.1f} M parameters, d_model {cfg.d_model}, {cfg.n_layers} layers, "
      f"{cfg.n_heads} query / {cfg.n_kv_heads} kv heads")
assert N == roofline.num_params(cfg)

# %% [markdown]
# ## 1. 一次测量为什么会骗人
# 同一个函数连续调用 12 次，每次单独计时。第一次包含一次性开销（分配内存、选 kernel、填满缓存），
# 之后的时间也在波动：别的进程抢走了 CPU、缓存被挤掉、CPU 频率变化。只跑一次得到的数字，可能是这里任何一个。

# %%
x = torch.randint(0, 256, (1, pick(64, 32)))
with torch.no_grad():
    t = profiling.time_calls(lambda: model(x), n=12)
print("each call (ms):", [round(v, 1) for v in t["all_ms"]])
print(f"first {t['first_ms']:.1f} ms | after it: median {t['median_ms']:.1f}, min {t['min_ms']:.1f}, "
      f"max {t['max_ms']:.1f} ms -> the range max/min is {t['max_ms'] / t['min_ms']:.2f}x")
print(f"first call / median = {t['first_ms'] / t['median_ms']:.2f}x")
print(f"wall time {t['wall_s']:.3f} s, process (CPU) time {t['process_s']:.3f} s, wall/process = "
      f"{t['wall_s'] / t['process_s']:.2f}")

# %% [markdown]
# 上面三行数字就是要点：第一次与中位数之比、预热后最慢与最快之比（范围）、墙钟时间与进程时间之比。
#
# - **墙钟时间 (wall time, `time.perf_counter`)** 是用户等待的时间；**进程时间 (`time.process_time`)** 是这个进程
#   所有线程真正占用 CPU 的时间。墙钟 / 进程 > 1：进程在等（别的程序占着 CPU，或在等 I/O、等 GPU）；
#   < 1：多个线程在并行。线程数为 1、机器空闲时两者相等。
# - 所以报告速度要：**预热**后再测、**重复多轮**、报告**中位数和范围**，并写明线程数与机器负载。
#
# 比较两个实现时还要**交替轮次 (interleaved rounds)**：A、B、A、B……而不是先 A 十次再 B 十次，否则一段时间里的
# 负载变化会全算到其中一个头上。最好的检验：拿同一个函数和它自己比。

# %%
f = lambda: profiling.time_calls(lambda: model(x), n=4)["median_ms"]  # noqa: E731
with torch.no_grad():
    res = interleaved_rounds({"A": f, "A again": f}, rounds=pick(5, 3))
ratios = [a / b for a, b in zip(res["A"]["values"], res["A again"]["values"], strict=True)]
print(f"A vs itself, {len(ratios)} interleaved rounds: ratio of medians {res['A']['median'] / res['A again']['median']:.3f}, "
      f"per-round ratios {min(ratios):.2f} .. {max(ratios):.2f}")

# %% [markdown]
# 同一个函数和自己比，每轮的比值也在上面打印的范围里波动：**比这个范围小的差别不能当真**。
# 课程的基准脚本 (`bench/*.py`) 都这样做：`pin_threads()` 固定线程数、`interleaved_rounds` 交替测量、行名里写范围。
#
# **在 GPU 上**还多一条：CUDA kernel 是异步排队执行的，`model(x)` 返回时 GPU 可能还没算完。计时前后都要同步：
#
# ```python
# torch.cuda.synchronize(); t0 = time.perf_counter()
# y = model(x)
# torch.cuda.synchronize(); dt = time.perf_counter() - t0
# ```
# 不同步量到的只是 CPU 发射 kernel 的时间。`profiling.time_calls(fn, sync=torch.cuda.synchronize)` 就是这样计时的。

# %% [markdown]
# ## 2. torch.profiler：算子表与 trace
# profiler 记录每个算子 (operator) 的调用次数和时间。**self 时间**是算子自己花的时间，不含它调用的子算子；
# 按它排序，最上面的就是热点。`record_shapes=True` 还记下输入形状，可以按形状分组。
# 下面 profile 的是 speed 模型的 decode：先 prefill 一段 prompt，再一步一步生成。

# %%
PROMPT, STEPS = 32, pick(12, 8)
run = profiling.decode_loop(model, batch=1, prompt_len=PROMPT, steps=STEPS)
run()  # warm-up
with roofline.profiled(record_shapes=True) as prof:
    run()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

# %%
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=8,
                                                          max_name_column_width=28, max_shapes_column_width=40))

# %% [markdown]
# 按形状分组后，同一个算子的不同调用分开了：例如 `aten::mm` 在 decode（每次一行输入）和 prefill（32 行输入）上
# 是不同的行。trace 文件记下每一次调用的起止时间，用浏览器打开 <https://ui.perfetto.dev>
# （或 Chrome 的 `chrome://tracing`），把文件拖进去，就能看到时间轴：每个 decode 步里矩阵乘法之间夹着的小算子。

# %%
trace = runs_dir("4.0.6") / "decode_trace.json"
prof.export_chrome_trace(str(trace))
print(f"trace: runs/4.0.6/{trace.name}, {trace.stat().st_size / 1e6:.1f} MB -> open it in https://ui.perfetto.dev")
share = profiling.self_time_share(prof)
print(f"matmul operators: {share['matmul_ms']:.1f} of {share['total_ms']:.1f} ms self CPU time "
      f"({share['matmul_share']:.0%}); everything else (norms, RoPE, attention, cat, softmax, dispatch): "
      f"{1 - share['matmul_share']:.0%}")

# %% [markdown]
# 最后一行是这一节的结论：decode 的时间里，矩阵乘法只占打印出的那个比例，其余是 norm、RoPE、注意力、拼接 KV、
# argmax 和 Python/算子调度。矩阵乘法读权重是**必须**花的时间；其余部分就是离极限还差的那一截。下面先量出极限。

# %% [markdown]
# ## 3. 这台机器的两个极限
# - **内存带宽**：GEMV（矩阵 × 向量）每个权重只用一次，速度完全由读内存的速度决定。探针对每种大小准备多份**不同的**权重，
#   总量超过最后一级缓存 (last-level cache) 的两倍，轮流相乘：每次读的权重都不在缓存里（cache-cold），和 decode 一样。
# - **峰值算力**：大方阵 GEMM（矩阵 × 矩阵）每读一个数做很多次乘加，速度由算力决定。
#
# 两者之比就是**屋脊点 (ridge point)**：算术强度 (arithmetic intensity，每字节多少 FLOPs) 低于它的计算受带宽限制，高于它的受算力限制。

# %%
print(f"last-level cache: {roofline.last_level_cache_bytes() / 2**20:.0f} MiB; torch threads: {torch.get_num_threads()}")
bw_points = roofline.bandwidth_probe(pick((4, 16, 64, 128), (1, 4)), quick=pick(False, True))
print_table([{"weight MiB": round(p.weight_bytes / 2**20, 1), "distinct copies": p.copies,
              "best GB/s": round(p.gb_s, 2), "median GB/s": round(p.median_gb_s, 2)} for p in bw_points])
BW = roofline.best_bandwidth(bw_points)
PEAK = roofline.peak_flops_probe(quick=pick(False, True))
print(f"memory roof {BW / 1e9:.1f} GB/s, compute roof {PEAK / 1e9:.1f} GFLOP/s (fp32 GEMM), "
      f"ridge point {PEAK / BW:.1f} FLOPs/byte")

# %% [markdown]
# ## 4. 先猜一个数
# 下面要测 batch 1 的 fp32 decode。每步要读全部权重（每个 4 字节）和 KV cache，第 2 节的 profile 又告诉你矩阵乘法只占一部分时间。
# 先猜：它能用到探针带宽的多少？（点选后按「记下预测」，或 `p.guess("B")`；第 6 节测出来以后揭晓。）

# %%
from course_lib.lab.quiz import predict

p = predict("4.0.6", "decode_mbu_b1")

# %% [markdown]
# ## 5. 训练步、prefill、decode 各在哪里
# 每个工作负载算两个数：FLOPs（`course_lib.roofline` 的计数：训练 `6N + 12·L·H·Q·T`，前向 2N 加注意力）和最少要搬的字节
# （decode：权重 + KV cache；prefill：权重 + 写入的 KV；训练步：参数、梯度、AdamW 状态的读写，不算激活值）。
# 两者之比是算术强度，FLOPs ÷ 实测时间是达到的 FLOP/s。

# %%
train_cfg = ModelConfig.small()
tp = profiling.train_point(train_cfg, batch=pick(8, 4), seq_len=pick(128, 64), steps=pick(3, 2))
pts = [tp]
for b in (1, 4):
    pts.append(profiling.prefill_point(model, b, pick(128, 64), repeats=pick(3, 2)))
BATCHES = pick((1, 4, 16, 64), (1, 4, 16))
for b in BATCHES:
    pts.append(profiling.decode_point(model, b, PROMPT, STEPS, repeats=2))
int8, int4 = quantize_model(model, "int8"), quantize_model(model, "int4", 64)
for q, bits, gs, name in ((int8, 8, None, "int8"), (int4, 4, 64, "int4")):
    for b in (1, 16):
        pts.append(profiling.decode_point(q, b, PROMPT, STEPS, bits, gs, label=name, repeats=2))
pts.append(profiling.prefill_point(int8, 1, pick(128, 64), repeats=pick(3, 2), weight_bits=8, label="int8"))
rows = profiling.points_table(pts, PEAK, BW)
print_table(rows)

# %%
profiling.plot_roofline(pts, PEAK, BW);

# %% [markdown]
# 读图（每句话下面都有打印或断言）：
# - batch 1 的 decode 点在屋脊点左边，在带宽那条斜线下方：每个权重只做 2 次运算，fp32 的算术强度约 0.5 FLOPs/字节。
#   batch 16 起 decode 的算术强度越过了屋脊点（表里 `bound by` 一栏变成 compute）。
# - **batch** 让 B 行共用一次权重读取，算术强度和达到的 FLOP/s 都随 batch 上升；prefill 在屋脊点右边，已经受算力限制，
#   batch 从 1 到 4 它的吞吐涨得比 decode 少。
# - **量化**让 decode 每步要读的字节变少，点向右移（断言了）：在带宽那一段，这就是提速的空间；能不能兑现，要看 kernel
#   自己是不是快到带宽极限（下面打印本机的倍数；`BENCHMARKS.md` 的 int8/int4 decode 行给出它们的 MBU）。
#   prefill 在算力那一段，少读字节帮不上它：打印的 int8 prefill 倍数就是本机的答案（kernel 每次还要把权重还原成浮点数）。

# %%
by = {p["name"]: p for p in pts}
dec = {b: by[f"decode fp32 B{b}"] for b in BATCHES}
ridge = PEAK / BW
pre1, pre4 = (by[f"prefill fp32 (B{b} x {pick(128, 64)})"] for b in (1, 4))
print(f"decode B1 intensity {dec[1]['intensity']:.2f} < ridge {ridge:.1f} < prefill intensity {pre1['intensity']:.0f}")
assert dec[1]["intensity"] < ridge < pre1["intensity"]
gain_dec = dec[4]["tokens_per_s"] / dec[1]["tokens_per_s"]
gain_pre = pre4["tokens_per_s"] / pre1["tokens_per_s"]
print(f"batch 1 -> 4: decode tokens/s x{gain_dec:.2f}, prefill tokens/s x{gain_pre:.2f}")
assert gain_dec > gain_pre
print("decode achieved GFLOP/s by batch:", {b: round(dec[b]["achieved_flops"] / 1e9, 2) for b in BATCHES})
assert dec[BATCHES[-1]]["achieved_flops"] > dec[1]["achieved_flops"]
q8_dec = by["decode int8 B1"]["tokens_per_s"] / dec[1]["tokens_per_s"]
q8_pre = by[f"prefill int8 (B1 x {pick(128, 64)})"]["tokens_per_s"] / pre1["tokens_per_s"]
print(f"int8 vs fp32: decode B1 x{q8_dec:.2f}, prefill B1 x{q8_pre:.2f}; "
      f"decode intensity {dec[1]['intensity']:.2f} -> {by['decode int8 B1']['intensity']:.2f} FLOPs/byte")
assert by["decode int8 B1"]["intensity"] > dec[1]["intensity"] and by["decode int4 B1"]["intensity"] > \
    by["decode int8 B1"]["intensity"]

# %% [markdown]
# ## 6. MFU 和 MBU
# - **MFU (model FLOPs utilization)** = 达到的 FLOP/s ÷ 峰值。训练日志 (`course_lib.monitor.StepLogger`) 每条记录都带 `mfu`：
#   tokens/s × `roofline.flops_per_token` ÷ 峰值（`TrainConfig.peak_flops`，为 0 时启动时用短 GEMM 量一次）。
# - **MBU (model bandwidth utilization)** = decode 每秒需要的字节（每步字节 × 每秒步数）÷ 探针带宽。nanochat 的推理基准报告的就是它。
#
# 公式数的 FLOPs 可信吗？用 profiler 自己数一遍：`with_flops=True` 让它按每个算子的形状计 FLOPs。CPU 上融合的注意力 kernel
# 没有计数公式，所以这一步把 SDPA 切到 math 后端（拆成普通矩阵乘法）。

# %%
from torch.nn.attention import SDPBackend, sdpa_kernel

from course_lib.model import DIYModel

B_T, T_T = pick(8, 4), pick(128, 64)
torch.manual_seed(0)
m_small = DIYModel(train_cfg)
xb = torch.randint(0, train_cfg.vocab_size, (B_T, T_T))
with sdpa_kernel(SDPBackend.MATH), roofline.profiled(with_flops=True) as fprof:
    m_small(xb, targets=xb).loss.backward()
counted = roofline.profile_flops(fprof) / xb.numel()
with roofline.profiled(with_flops=True) as fused:          # the default (fused) attention kernel
    m_small(xb, targets=xb).loss.backward()
formula = roofline.flops_per_token(train_cfg, T_T)
print(f"FLOPs per training token: formula 6N + 12LHQT = {formula:,}; profiler count = {counted:,.0f} "
      f"(math attention), {roofline.profile_flops(fused) / xb.numel():,.0f} (fused attention: not counted); "
      f"ratio formula / count {formula / counted:.3f}")
assert abs(formula / counted - 1) < 0.02 and roofline.profile_flops(fused) < roofline.profile_flops(fprof)
mfu_formula = tp["tokens_per_s"] * formula / PEAK
mfu_profile = tp["tokens_per_s"] * counted / PEAK
print(f"training step MFU: {mfu_formula:.1%} (formula) vs {mfu_profile:.1%} (profiler count), same step time")

# %% [markdown]
# 公式和 profiler 的计数差在 2% 以内（上面断言了；目标是 ±15%）；融合 kernel 的那一行少数了整个注意力。profiler 多数的那一点是逐元素运算（RMSNorm、SiLU、softmax 的乘加），公式只数矩阵乘法和
# 注意力（PaLM / nanoGPT 的约定），本来就不数它们。
#
# 训练日志里的 MFU 就是同一个公式。跑几步真的训练，看日志（`peak_flops=PEAK`：用上面探针测的峰值；不给时训练开始时
# 用一个短 GEMM 量一次）：

# %%
from course_lib.config import TrainConfig
from course_lib.monitor import read_jsonl
from course_lib.train import Trainer

out = runs_dir("4.0.6/train", fresh=True)
tc = TrainConfig.default(max_steps=pick(12, 6), log_interval=pick(4, 3), eval_interval=1000, ckpt_interval=0,
                         out_dir=str(out), tensorboard=False, batch_size=B_T, seq_len=T_T, warmup_steps=2,
                         peak_flops=PEAK)
Trainer(train_cfg, tc).fit()
last = [r for r in read_jsonl(out / "metrics.jsonl") if "mfu" in r][-1]
logged = [r["mfu"] for r in read_jsonl(out / "metrics.jsonl") if "mfu" in r]
print(f"logged MFU per record: {[f'{v:.1%}' for v in logged]}; the timed step above: {mfu_formula:.1%}")
assert last["mfu"] == last["tokens_per_s"] * formula / PEAK

# %% [markdown]
# 日志里每条记录的 MFU = 这段时间的 tokens/s × FLOPs/token ÷ 峰值（上面断言了这个等式）。它在记录之间的起伏就是第 1 节
# 说的噪声：这一段时间里别的程序抢走了多少 CPU，再加上评估 (eval) 的时间也算在那一段里。对 decode 来说，更有用的数是 MBU：

# %%
mbu = {b: dec[b]["achieved_bytes_s"] / BW for b in BATCHES}
print("fp32 decode MBU by batch:", {b: round(v, 3) for b, v in mbu.items()})
need = roofline.decode_bytes_per_step(cfg, PROMPT + STEPS // 2, 1)
print(f"batch-1 step reads {need / 1e6:.1f} MB: at the probe's {BW / 1e9:.1f} GB/s that is "
      f"{need / BW * 1e3:.2f} ms, measured {dec[1]['seconds'] * 1e3:.2f} ms per step -> MBU {mbu[1]:.2f}")
print(f"limit {BW / need:.0f} tok/s, measured {dec[1]['tokens_per_s']:.0f} tok/s; if only the matmuls ran "
      f"({share['matmul_share']:.0%} of the profiled time) MBU would be {min(1.0, mbu[1] / share['matmul_share']):.2f}")

# %%
p.reveal(mbu[1])

# %% [markdown]
# ## 7. 把 decode 往屋脊推一步
# 上一行说：只剩矩阵乘法时 MBU 会高得多。剩下的时间花在两处：每层十几个小算子各自的固定开销，和矩阵乘法 kernel 本身没读满带宽。
# `generate(..., cache="fused")`（`course_lib/fused_decode.py`）对准这两处，算术不变：
# - q、k、v 三个投影的权重叠成一个矩阵 `W_qkv`，gate 和 up 叠成 `W_gate_up`：每层 5 次矩阵乘法变成 2 次，矩阵也更宽；
# - CPU 上叠好的权重按 (in, out) 存，`x @ W_t` 对这种宽矩阵比 `F.linear` 读得快（`fused_decode.py` 的注释里有测量）；
# - 每一行都在同一个位置上，所以不要 mask、不要位置张量（只接受没有 padding 的提示）。
#
# 其余的运算就是模型自己的（同样的 RMSNorm、RoPE、SDPA），所以 token 逐个相同（下面断言了）。可读的 `DIYModel.forward`
# 仍是参照实现，`tests/unit/test_fused_decode.py` 逐步对照两者的 logits。两种 decode 交替测几轮：

# %%
from course_lib.generate import generate
from course_lib.lab.measure import interleaved_rounds, measure_generation

N_DEC = pick(32, 8)
fused_runs = interleaved_rounds(
    {k: (lambda k=k: measure_generation(model, 1, PROMPT, N_DEC, cache=k)["decode_tok_s"]) for k in ("dynamic", "fused")},
    rounds=pick(5, 2),
)
ids = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
same = torch.equal(generate(model, ids, N_DEC), generate(model, ids, N_DEC, cache="fused"))
for k, r in fused_runs.items():
    print(f"{k:>8} decode, batch 1: {r['median']:.0f} tok/s (range {r['min']:.0f}-{r['max']:.0f}), "
          f"MBU {r['median'] * need / BW:.2f}")
print(f"fused / reference: x{fused_runs['fused']['median'] / fused_runs['dynamic']['median']:.2f}; "
      f"greedy tokens identical: {same}")
assert same

# %% [markdown]
# 打印的倍数就是这两处省下的时间；MBU 仍然到不了 1：这台 CPU 上单线程的 GEMV kernel 对这些形状本身就读不满探针测到的带宽。
# `make benchmarks` 的 inference_peers 一节在 22 M 的模型上测同样的比较，并与 HF 的 `generate` 对照。

# %% [markdown]
# ## 小结
# - 一次计时会骗人：先预热，交替多轮，报告中位数和范围、线程数和负载；GPU 上计时前后 `torch.cuda.synchronize()`。
# - `torch.profiler`：按 self 时间排序的算子表找热点，`record_shapes` 按形状分开，trace 在 Perfetto 里看时间轴。
# - 两个极限：GEMV 探针（带宽）和 GEMM 探针（算力）；它们的比值是屋脊点。
# - 小 batch 的 decode 在屋脊点左边：batch 和量化都把它往右推，所以有用；prefill 和训练步在右边，受算力限制：
#   batch 给 prefill 带来的提升比 decode 小得多，int8 在本机反而让 prefill 变慢（第 5 节打印的倍数）。
# - MFU = 达到的 FLOP/s ÷ 峰值（训练日志里有）；MBU = 需要的字节/秒 ÷ 带宽（`BENCHMARKS.md` 的 decode 行里有）。
# - 让 decode 更接近带宽极限：少而大的矩阵乘法（`cache="fused"`），其余算术不变，token 逐个相同。
#
# ## 练习
# 实现 `exercises/ex406_roofline_counts.py`：给一个配置，算出每个训练 token 的 FLOPs（别漏了注意力那一项）和每个 decode 步
# 读的字节（别漏了 KV cache）。评分器拿 `course_lib.roofline` 的结果对照：

# %%
from course_lib.lab.grading import check
check("4.0.6");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.6")

# %% [markdown]
# ## 下一步
#
# - 打开 `runs/4.0.6/decode_trace.json`，在时间轴上找一个 decode 步：矩阵乘法之间的小算子各占多长？
# - `python -m course_lib.train ... --peak-flops 989e12`：在 H100 上用厂商的 bf16 峰值，日志里的 MFU 就能和 nanoGPT、picotron 的数对照。
# - `make benchmarks`：`bench/inference_peers.py` 的每个 decode 行都带 MBU，用的是同一次运行里测的带宽探针。
# - 有 GPU 时把 `device="cuda"` 传给两个探针：带宽是 HBM 的，峰值是 bf16 张量核的，屋脊点会远在右边。
