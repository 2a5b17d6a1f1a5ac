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
# # 4.1.5 · 混合精度训练 (mixed precision)：autocast、bf16、fp16 + GradScaler
#
# **学习目标**
# - 会用 `torch.autocast`：CPU 上 bf16，GPU 上 bf16 或 fp16；知道哪些运算被降精度、哪些保持 fp32；
# - 理解 fp16 为什么需要梯度缩放器 (GradScaler)，而 bf16 通常不需要；
# - 看到 GradScaler 的完整行为：裁剪前先 `unscale_`、遇到 inf 跳过这一步并计数、跳过时学习率调度器 (scheduler) 不前进、scale 状态存进检查点；
# - 在这台机器上**测量** fp32 与 bf16 的损失曲线、速度和内存。
#
# **前置知识**：4.0.3（梯度裁剪）、4.0.5（显存估算）、4.1.4（梯度累积）。
#
# **预计时间**：运行{{run_time}}，阅读 + 练习约 30 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import torch

from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.lab.measure import interleaved_rounds, ratio_stats
from course_lib.memory import estimate, measure_peak, step_timer
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes, print_table, smooth
from course_lib.monitor import ProgressBar
from course_lib.train import Callback, Trainer

ROOT = runs_dir("4.1.5", fresh=True)
STEPS = pick(120, 15)
MC = ModelConfig.small()
print("CUDA:", torch.cuda.is_available(), "| model params:", f"{sum(p.numel() for p in __import__('course_lib.model', fromlist=['DIYModel']).DIYModel(MC).parameters()):,}")

# %% [markdown]
# ## 1. 三种浮点格式
#
# | 格式 | 指数位 | 尾数位 | 最大值 | 相对精度 (machine eps) |
# |---|---|---|---|---|
# | fp32 | 8 | 23 | 3.4e38 | 1.2e-7 |
# | bf16 | 8 | 7 | 3.4e38 | 7.8e-3 |
# | fp16 | 5 | 10 | 65504 | 9.8e-4 |
#
# 关键在**指数位**：bf16 和 fp32 的指数位一样多，能表示的数值范围一样大；fp16 只有 5 位指数，
# 比 6e-8 小的梯度会下溢 (underflow) 成 0，比 65504 大的会溢出成 inf。下面直接在这台机器上看：

# %%
g = torch.tensor([1e-3, 1e-6, 1e-8, 7e4])
rows = [{"value (fp32)": f"{v:.0e}", "as bf16": f"{float(v.to(torch.bfloat16)):.3e}",
         "as fp16": f"{float(v.to(torch.float16)):.3e}"} for v in g]
print_table(rows)
print("finfo eps  bf16:", torch.finfo(torch.bfloat16).eps, " fp16:", torch.finfo(torch.float16).eps)

# %% [markdown]
# 所以：**fp16 需要把 loss 乘一个大数 (scale) 再反向**，让小梯度落在 fp16 能表示的范围里，
# 更新参数前再除回来 (unscale)；如果乘得太大出现 inf，就跳过这一步、把 scale 减半。这就是 GradScaler。
# **bf16 的范围和 fp32 一样，小梯度不会下溢，所以通常不需要 scaler**；它付出的代价是精度低（7 位尾数），
# 因此 autocast 按一张**运算清单**决定每个运算的精度：矩阵乘法、线性层这类「耗时多、对精度不太敏感」的运算降到 bf16。
# 其余运算怎么处理，**CPU 和 CUDA 的清单不一样**：按 PyTorch 文档，CUDA 的 autocast 把 softmax、log_softmax、layer_norm、exp、sum 等提升 (upcast) 到 fp32
# （这台机器没有 GPU，下表只有 cpu 一列；有 GPU 时同一个单元格会多打印 cuda 一列）；
# CPU 的 autocast 不提升它们——输入是 bf16（上一层矩阵乘法的输出），它们就在 bf16 上算、返回 bf16。不要背一张清单，
# 在自己的设备上打印出来（下面的单元格把每个运算接在一次矩阵乘法后面，和模型里一样）。
# 不管哪种设备，参数和优化器状态始终是 fp32：这才叫 *mixed* precision。
#
# > 旧写法 `torch.cuda.amp.autocast()` / `torch.cuda.amp.GradScaler()`（学习计划里的示例）已被弃用 (deprecated)，
# > 对应的新写法是 `torch.autocast("cuda", dtype=torch.float16)` / `torch.amp.GradScaler("cuda")`：设备类型变成参数，CPU 也能用同一套 API。

# %%
import torch.nn.functional as F

AUTOCAST_OPS = {
    "matmul": lambda h, w: h @ w,
    "softmax": lambda h, w: torch.softmax(h @ w, -1),
    "log_softmax": lambda h, w: torch.log_softmax(h @ w, -1),
    "layer_norm": lambda h, w: F.layer_norm(h @ w, (w.shape[1],)),
    "exp": lambda h, w: torch.exp(h @ w),
    "cross_entropy (loss)": lambda h, w: F.cross_entropy(h @ w, torch.zeros(h.shape[0], dtype=torch.long, device=h.device)),
}
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
dtype_rows = []
for name, op in AUTOCAST_OPS.items():
    row = {"op (after a matmul)": name}
    for dev in devices:
        h, w = torch.randn(4, 8, device=dev), torch.randn(8, 8, device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16):
            row[f"{dev} autocast bf16 ->"] = str(op(h, w).dtype).replace("torch.", "")
    dtype_rows.append(row)
print_table(dtype_rows)
cpu_col = {r["op (after a matmul)"]: r["cpu autocast bf16 ->"] for r in dtype_rows}
assert cpu_col["matmul"] == "bfloat16" and cpu_col["softmax"] == "bfloat16", cpu_col   # the CPU list, as the text says

# %% [markdown]
# ## 2. 损失曲线：fp32 vs bf16 autocast（在这台机器上训练）

# %%
def run(dtype, **kw):
    cfg = TrainConfig.default(max_steps=STEPS, dtype=dtype, warmup_steps=pick(10, 2), out_dir=str(ROOT / dtype),
                              tensorboard=False, eval_interval=STEPS, log_interval=10_000, ckpt_interval=0, device="cpu", **kw)
    tr = Trainer(MC, cfg, callbacks=[ProgressBar(dtype)], console=False, save_checkpoints=False)
    return tr, tr.fit()


tr32, h32 = run("fp32")
tr16, hb16 = run("bf16")
fig, ax = new_axes("fp32 vs bf16 autocast (CPU)", "optimizer step", "training loss (nats/token)")
ax.plot([h["loss"] for h in h32], alpha=0.3, color="C0"); ax.plot(smooth([h["loss"] for h in h32]), color="C0", label="fp32")
ax.plot([h["loss"] for h in hb16], alpha=0.3, color="C1"); ax.plot(smooth([h["loss"] for h in hb16]), color="C1", label="bf16 autocast")
ax.legend();
print(f"final loss fp32 {h32[-1]['loss']:.4f} | bf16 {hb16[-1]['loss']:.4f} | eval fp32 {h32[-1]['eval_loss']:.4f} bf16 {hb16[-1]['eval_loss']:.4f}")

# %% [markdown]
# ## 3. 速度与内存：这台机器上测得的数字

# %% [markdown]
# 上面两次训练的总耗时不能拿来比速度：先跑的 fp32 还要付第一次分配内存、初始化线程池这类一次性开销，
# 两次运行时机器上的其他负载也不一样。所以速度单独测，用 4.0.6 第 1 节的做法：同一个模型、同一个 batch，两种精度各先热身一次，
# 再交替轮次计时（一轮里 fp32、bf16 各跑 2 步），每一轮算一个比值 fp32 时间 / bf16 时间（> 1 表示 bf16 更快），
# 报告中位数和范围；计时时把 torch 线程数固定为 1。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.1.5", "bf16_speedup")

# %%
B_MP, T_MP = 8, 128
m32 = measure_peak(MC, batch_size=B_MP, seq_len=T_MP, dtype="fp32")
mb16 = measure_peak(MC, batch_size=B_MP, seq_len=T_MP, dtype="bf16")
threads_before = torch.get_num_threads()
torch.set_num_threads(1)   # pinned for the timing: the ratio compares precisions, not thread counts
try:
    timers = {dt: step_timer(MC, B_MP, T_MP, dt, steps=2) for dt in ("fp32", "bf16")}
    for t in timers.values():
        t()                                        # warm-up for both, not timed
    res = interleaved_rounds(timers, rounds=pick(5, 3))
finally:
    torch.set_num_threads(threads_before)
speedup = ratio_stats([a / b for a, b in zip(res["fp32"]["values"], res["bf16"]["values"], strict=True)])
print_table([
    {"setting": "fp32", "s/step (median)": res["fp32"]["median"], "range": f"{res['fp32']['min']:.3f}-{res['fp32']['max']:.3f}",
     "speed-up vs fp32": 1.0, "peak MiB (measured)": m32["peak"] / 2**20},
    {"setting": "bf16 autocast", "s/step (median)": res["bf16"]["median"], "range": f"{res['bf16']['min']:.3f}-{res['bf16']['max']:.3f}",
     "speed-up vs fp32": speedup["median"], "peak MiB (measured)": mb16["peak"] / 2**20},
])
print(f"batch {B_MP} x seq {T_MP}; {len(res['fp32']['values'])} interleaved rounds of 2 steps, torch threads 1; "
      f"speed-up per round {speedup['min']:.2f}-{speedup['max']:.2f}; memory measured with {m32['method']}")

# %%
p.reveal(speedup["median"])

# %% [markdown]
# 怎么读这张表：
# - **内存**：4.0.5 第 2 节算过这笔账——激活值里矩阵乘法的输出变成 bf16，但参数、梯度和 AdamW 状态仍是 fp32，autocast 还给每个权重
#   多缓存一份 bf16 副本。这个模型的激活值比权重副本大，所以峰值内存下降（下面一行由测量结果生成，并断言方向）。
# - **速度**：CPU 上 bf16 不一定更快——没有 AMX / AVX512-BF16 指令的 CPU 要把 bf16 转换后再算矩阵乘法，autocast 每一步还要做类型转换；
#   有这些指令的 CPU（以及 GPU 的 tensor core）上 bf16 才快。速度的方向取决于这台机器，所以下面不断言它：只有**每一轮**都是同一个方向时，
#   那一行才说"更快"或"更慢"，否则只报告比值。`bench/mixed_precision.py` 打印同样的比例。

# %%
mem_ratio = mb16["peak"] / m32["peak"]
if speedup["min"] > 1:
    direction = "faster than fp32 in every round"
elif speedup["max"] < 1:
    direction = "slower than fp32 in every round"
else:
    direction = "no consistent direction: some rounds faster, some slower"
print(f"peak memory bf16 / fp32 = {mem_ratio:.2f}: autocast {'saves' if mem_ratio < 1 else 'does not save'} memory on this model; "
      f"bf16 step speed = {speedup['median']:.2f}x fp32 (median; rounds {speedup['min']:.2f}-{speedup['max']:.2f}): {direction}.")
assert mem_ratio < 1.0, f"bf16 autocast should lower the measured peak on this model: {mem_ratio:.2f}"

# %% [markdown]
#
# **GPU 上会怎样**：速度这里测不了（没有 GPU；GPU 的 tensor core 跑 16 位矩阵乘法比 fp32 快得多，这是厂商的数据）。内存可以估算：
# 下面用 `course_lib.memory.estimate`（4.0.5 的估算器）算一个 GPT-2 small 规模的模型（12 层、d=768、GPT-2 的词表 50,257）
# 在 batch 8 × 1024 token 下的内存——这些是**估算**，不是在 GPU 上的测量。注意词表：本课程的字节级模型只有 258 个 token，
# 换成 50,257 之后，logits 以及 loss 反向时的 fp32 缓冲区每个就有 8 × 1024 × 50,257 × 4 字节 ≈ 1.5 GiB，成了激活值里的大头；
# bf16 对它们帮助有限（loss 会把 logits 提升到 fp32），所以省下的比例比 258 词表时小。

# %%
gpt2 = ModelConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048, max_seq_len=1024)
print(f"one fp32 logits-sized buffer: {8 * 1024 * gpt2.vocab_size * 4 / 2**30:.2f} GiB")
rows = []
for dt in ("fp32", "bf16", "fp16"):
    e = estimate(gpt2, batch_size=8, seq_len=1024, dtype=dt)
    b = e.breakdown()
    rows.append({"dtype": dt, "params+grads+AdamW MiB": round(b["params"] + b["grads"] + b["optimizer_state"]),
                 "activations MiB": round(b["activations"]), "autocast copies MiB": round(b["autocast_copies"]),
                 "peak MiB": round(b["peak"])})
print_table(rows)
e32, e16 = estimate(gpt2, 8, 1024, "fp32"), estimate(gpt2, 8, 1024, "bf16")
print(f"estimated peak bf16 / fp32 = {e16.peak / e32.peak:.2f} (activations {e16.activations / e32.activations:.2f})")

# %% [markdown]
# ## 4. fp16 + GradScaler：强制一个 inf 梯度，看它被跳过
#
# `Trainer` 的 fp16 路径（`course_lib/train.py`）：`scaler.scale(loss).backward()` → `scaler.unscale_(optimizer)` →
# 在**真实**梯度上 `clip_grad_norm_` → `scaler.step(optimizer)`（有 inf/NaN 就不更新）→ `scaler.update()`；
# 如果 scale 变小了，说明这一步被跳过：`skipped_steps += 1`，**不**调用 `scheduler.step()`（否则学习率会比实际更新次数走得快）。
# 这里只跑 6 步做演示；在 GPU 上 fp16 是常用的选择（老 GPU 没有 bf16）。

# %%
class InfGradAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_after_backward(self, trainer):
        if trainer.step + 1 == self.step:
            next(trainer.model.parameters()).grad.view(-1)[0] = float("inf")


cfg16 = TrainConfig.default(max_steps=6, dtype="fp16", warmup_steps=1, out_dir=str(ROOT / "fp16"), tensorboard=False,
                            log_interval=1, eval_interval=100, ckpt_interval=3, device="cpu")
tr = Trainer(MC, cfg16, callbacks=[InfGradAt(3)], console=False)
h = tr.fit()
print_table([{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items() if k in
              ("step", "loss", "lr", "grad_norm", "skipped", "skipped_steps")} for r in h])
print("scaler scale now:", tr.scaler.get_scale(), "| scheduler steps:", tr.scheduler.last_epoch, "of", len(h), "optimizer calls")
print("scaler state in the checkpoint:", tr.state_dict()["scaler"])
finite = [r["grad_norm"] for r in h if not r["skipped"]]
assert max(finite) < 1000, f"logged grad-norms must be unscaled (true size), got {finite}"

# %% [markdown]
# 第 3 步的梯度里有 inf：参数没有更新，scale 从 65536 减半到 32768，学习率在第 4 步和第 3 步相同（调度器没有前进）。
# grad_norm 是 unscale 之后的真实范数（表里是个位数），不是乘了 65536 的值（那会是几十万）——这就是「先 unscale_ 再裁剪」。
# scaler 的状态（scale、growth tracker）在检查点里，恢复后继续用同一个 scale（测试：`tests/unit/test_amp.py`）。
#
# ## 小结
# - `torch.autocast(device_type, dtype)` 只降低部分运算的精度，哪些运算降、哪些提升到 fp32 因设备而异（CPU 上 softmax 等返回 bf16）；参数和优化器状态仍是 fp32。
# - fp16 范围小 → 需要 GradScaler（scale、unscale_ 后裁剪、inf 时跳过并减半 scale、跳过时调度器不动）；bf16 范围与 fp32 相同 → 通常不需要。
# - 速度和内存要在自己的硬件上量：本机 CPU 上 bf16 慢得多、峰值内存只降了一部分（第 3 节）；GPU 上要在 GPU 上量（第 3 节末尾的 GPT-2 估算只是估算）。
#
# ## 练习
# 打开 `exercises/ex415_amp_step.py`，写出 autocast + GradScaler 的一个训练步。

# %%
from course_lib.lab.grading import check

check("4.1.5")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.5")   # 预测题在第 3 节的计时之前已经问过

# %% [markdown]
# ## 下一步
# - 在有 GPU 的机器上运行 `python bench/mixed_precision.py`（会加上 fp16 + GradScaler 一行），与本页 CPU 的比例对比；
# - 把第 4 节的 inf 改到第 1 步，看看 scale 和学习率怎样变化；
# - 4.2：把训练好的模型导出、量化、高效推理。
