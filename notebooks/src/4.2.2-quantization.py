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
# # 4.2.2 · 量化 (quantization)：int8、int4、GPTQ
#
# **学习目标**
# - 会用学习计划里的 `torch.ao.quantization.quantize_dynamic`，知道它已被弃用 (deprecated) 以及替代品 torchao `quantize_`；
# - 理解并调用课程自己的实现：int8 逐通道对称量化、int4 分组量化（两个值打包进一个字节）、GPTQ 式误差补偿；
# - 在训练好的参考模型上**同一次运行里**量出：文件大小、内存、prefill/decode 速度、困惑度 (perplexity)、与 fp32 的 KL 和 top-1 一致率；
# - 能说明量化的作用：省显存/内存、（在有合适 kernel 时）加速——以及在这台 CPU 上实际看到了什么。
#
# **前置知识**：4.2.1 的推理产物；矩阵乘法与浮点数表示。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 45 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import warnings

import torch

from course_lib.config import pick, quick_mode
from course_lib.lab.plotting import new_axes, print_table
from course_lib.pretrained import calibration_batch, heldout_tokens, load_reference_model
from course_lib.lab.measure import comparison_table
from course_lib.model import DIYModel
from course_lib.quantize import (TORCHAO_REPLACEMENT, dequantize_int4, dequantize_int8, dynamic_int8, quantize_int4,
                                 quantize_int8)

torch.manual_seed(0)
model, tok = load_reference_model()
heldout = heldout_tokens()
print(f"reference model: {model.num_parameters():,} params; held-out text: {len(heldout):,} tokens")

# %% [markdown]
# ## 1. 一个权重矩阵的量化
#
# **int8 逐通道对称 (per-channel symmetric)**：每一行（一个输出通道）一个缩放因子 `scale = max|row| / 127`，
# `q = round(w / scale)`。四舍五入的误差最多是半个步长 `scale / 2`。
#
# **int4 分组 (group-wise)**：4 位只有 16 个值（[-8, 7]），一行一个 scale 太粗，于是每 `group_size` 个输入一组，各有自己的 scale；
# 两个 4 位值打包进一个 `uint8`。组越小越准（下表的 `mean_err` 随组变小而下降），scale 也越多；输入维度不是组大小的倍数时，
# 最后一组要补齐 (pad)：这个矩阵有 192 个输入，group 128 补到 256，所以下表里它反而最大。

# %%
w = model.layers[0].mlp.up_proj.weight.detach()
q8, s8 = quantize_int8(w)
err8 = (dequantize_int8(q8, s8) - w).abs()
rows = [{"format": "int8 per-channel", "bytes": q8.numel() + s8.numel() * 4, "max_err": err8.max().item(),
         "mean_err": err8.mean().item()}]
for g in (32, 64, 128):
    p, s = quantize_int4(w, g)
    e = (dequantize_int4(p, s, g, w.shape[1]) - w).abs()
    rows.append({"format": f"int4 group {g}", "bytes": p.numel() + s.numel() * 4, "max_err": e.max().item(),
                 "mean_err": e.mean().item()})
print("fp32 bytes:", w.numel() * 4, "| weight shape", tuple(w.shape))
print_table(rows)

# %% [markdown]
# ## 2. 学习计划的 API：`torch.ao.quantization.quantize_dynamic`
#
# 动态量化 (dynamic quantization)：权重存成 int8，激活在每次前向时临时量化，用 fbgemm/qnnpack 的 int8 kernel（仅 CPU）。
# 在当前的 PyTorch 里它还能用，但会发出弃用警告；下面把警告原文打印出来，再给出 torchao 的替代写法（没有安装 torchao，只展示代码）。

# %%
print("torch", torch.__version__)
qdyn, msgs = dynamic_int8(model)
for m in msgs:
    print("WARNING:", m.splitlines()[0])
print(qdyn.layers[0].self_attn.q_proj)
print(TORCHAO_REPLACEMENT)

# %% [markdown]
# ## 3. GPTQ：不只是四舍五入
#
# 逐元素四舍五入 (round-to-nearest, RTN) 只看权重本身。GPTQ 看的是**层的输出**：用一小批校准数据 (calibration set)
# 得到输入的二阶统计 `H = XᵀX`，按列量化，每量化一列就把它的误差按 `H⁻¹` 分摊到还没量化的列上，让 `W·x` 尽量不变。
# `course_lib.quantize.gptq_int4` 就是这个循环（不到 30 行）。校准数据取自训练集，困惑度在留出集 (held-out) 上测。

# %%
calib = calibration_batch(pick(32, 8), 128)
print("calibration:", tuple(calib.shape), "token ids from the training split")

# %% [markdown]
# ## 4. 对比表：同一次运行里全部测出来
#
# - `file_MB`：保存后的文件（safetensors + config；动态量化的 packed 参数只能 `torch.save`）；
# - `memory_MB`：模型持有的张量字节数；
# - `prefill`/`decode` tokens/s：batch 1 和 batch 8；
# - `perplexity`（留出集）、`kl_vs_fp32`（每个 token 的 KL 散度，nats）、`top1_vs_fp32`（下一个 token 预测一致的比例）。
#
# 注意这里的困惑度是**每字节** (per-byte) 的：字节级模型的一个 token 就是一个字节，困惑度 = exp(每字节平均 loss)。
# 它不能和 BPE 分词模型的每 token 困惑度直接比较——一个 BPE token 平均覆盖好几个字节，每 token 的困惑度大约是每字节困惑度的
# 「字节数/token」次方。本表只比较**同一个模型**在不同量化方式下的相对变化（`ppl_ratio`），这个比值才有意义。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.2.2", "int8_size_ratio")

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    table = comparison_table(model, heldout, calib, group_size=64, eval_batches=pick(20, 2), new_tokens=pick(16, 4),
                             prompt_len=pick(64, 16))
print_table(table, ["method", "file_MB", "size_ratio", "memory_MB", "perplexity", "ppl_ratio", "kl_vs_fp32",
                    "top1_vs_fp32"])
print_table(table, ["method", "prefill_tok_s_b1", "decode_tok_s_b1", "decode_tok_s_b8", "decode_ratio_b1"])

# %%
import matplotlib.pyplot as plt

fig, (a1, a2) = new_axes("Quantization on the reference model", "method", "file size (MB)", ncols=2)
names = [r["method"] for r in table]
a1.bar(names, [r["file_MB"] for r in table])
a1.set_title("File size"); a1.set_ylabel("MB"); a1.tick_params(axis="x", rotation=30)
a2.bar(names, [r["perplexity"] for r in table], color="tab:orange")
a2.set_title("Held-out perplexity (lower is better)"); a2.set_ylabel("perplexity"); a2.set_xlabel("method")
a2.set_ylim(min(r["perplexity"] for r in table) * 0.98, max(r["perplexity"] for r in table) * 1.01)
a2.tick_params(axis="x", rotation=30)
plt.tight_layout(); plt.show()

# %%
by = {r["method"]: r for r in table}
print(f"int8: {by['int8']['size_ratio']:.2f}x the fp32 file (target <= 0.3), perplexity x{by['int8']['ppl_ratio']:.4f} (target <= 1.01)")
print(f"int4 RTN: {by['int4']['size_ratio']:.2f}x the file (target <= 0.2), perplexity +{(by['int4']['ppl_ratio'] - 1) * 100:.2f}%")
print(f"GPTQ int4: same size, perplexity +{(by['gptq-int4']['ppl_ratio'] - 1) * 100:.2f}% "
      f"(recovers {(by['int4']['perplexity'] - by['gptq-int4']['perplexity']) / max(by['int4']['perplexity'] - by['fp32']['perplexity'], 1e-9):.0%} of the RTN loss)")
print(f"decode speed at batch 1 vs fp32: int8 x{by['int8']['decode_ratio_b1']:.2f}, int4 x{by['int4']['decode_ratio_b1']:.2f}, "
      f"dynamic-int8 x{by['dynamic-int8']['decode_ratio_b1']:.2f}")
ref_params, ref_mb = model.num_parameters(), by["fp32"]["memory_MB"]
for m in ("int8", "int4"):
    r = by[m]["decode_ratio_b1"]
    print(f"{m} weight-only decode on its packed kernel: {r:.2f}x fp32 at batch 1 on the "
          f"{ref_params / 1e6:.1f}M reference model ({ref_mb:.0f} MB of fp32 weights; see 4c)")
# what the text below states: size is the sure gain, int8 is nearly lossless, int4 RTN costs more than int8
assert by["int8"]["size_ratio"] <= 0.3 and by["int4"]["size_ratio"] <= 0.2, table
assert by["int8"]["ppl_ratio"] <= 1.01, by["int8"]
assert by["int4"]["ppl_ratio"] > by["int8"]["ppl_ratio"], (by["int4"], by["int8"])
if not quick_mode():   # GPTQ recovers part of it (quick mode calibrates on 8 sequences: too few to be sure)
    assert by["gptq-int4"]["perplexity"] < by["int4"]["perplexity"], (by["gptq-int4"], by["int4"])

# %%
p.reveal(by["int8"]["size_ratio"])

# %% [markdown]
# **怎么读这些数**（数字来自上面这次运行，单元格末尾的断言检查了下面说的方向）：
# - 大小：int8 约为 fp32 文件的 1/4、int4 约 1/7（再加上 scale），见 `size_ratio`。这是确定的，也是量化最可靠的收益：
#   同样的内存/显存放下更大的模型，每步 decode 要从内存读的字节也更少。
# - 质量：int8 几乎无损（`ppl_ratio` ≤ 1.01）；int4 RTN 的代价明显大于 int8，GPTQ 用同样的位数把一部分代价补了回来（补回的比例见上面打印的一行）。
# - 速度：学习计划说「2–3 倍加速」——看上表的 `decode_ratio_b1` 列，而不是相信这句话。
#   课程的 `Int8Linear` / `Int4Linear` 各有两条路径：`forward_reference` 是读得懂的教学版——先把整个权重反量化成 fp32 再做矩阵乘法，
#   多了一步而没有省掉任何一步，不是快路径（下面的表测的都是打包路径）；`quantize_model` 默认再调用 `convert_for_runtime`（gpt-fast 的做法：
#   先生成量化后的 state dict，再把模块一次性转换成运行时形式），把权重**一次性**打包成 PyTorch 自带的低比特 kernel 要的布局：
#   int8 用 `torch._weight_int8pack_mm`，int4 用 `_convert_weight_to_int4pack_for_cpu` + `_weight_int4pack_mm_for_cpu`。
#   这些 kernel 直接读 1 字节 / 半字节的权重，激活用 bf16（`course_lib/quantize.py` 的注释写了为什么不用 fp32 激活）；
#   和教学版的差别只是 bf16 舍入，`tests/unit/test_quant_kernels.py` 规定了容差。
#   保存格式不变：打包后的张量不进 state dict，加载时重新打包（代价：运行时 int4 层多占一份打包权重的内存，表里的 `memory_MB` 只算存储的张量）。
#   参考模型的 fp32 权重只有几 MB（上面打印了准确的数），batch 1 的一步 decode 很短，Python、算子调度这类**固定开销** (overhead)
#   和机器负载的波动占的比例大（为什么，见 4.0.6 的 profile 与 roofline）：这次 int8 的 `decode_ratio_b1` < 1、int4 的 > 1，
#   方向不一致，这张表上的速度不能下结论。下面 4c 换一个大模型、用交替轮次再测。
#   `quantize_dynamic` 也用了真正的 int8 kernel（fbgemm），但它每步还要量化激活。
#   CPU 同时被其它进程占用时，计时噪声可能比这些差别还大；大小和质量的数字不受影响。

# ## 4c. 换一个受内存带宽限制的模型：22M 参数
#
# 速度只和形状有关、和权重学到了什么无关，所以这里用随机初始化的 `speed_config()`：d512 × 8 层、8 个 query 头 / 2 个 kv 头，
# 约 2230 万参数，fp32 权重 89 MB（下面打印），远大于常见 CPU 的末级缓存（4.0.6 第 3 节打印了本机的大小）。每一步 decode 都得把所有权重从内存读一遍，这时一步的时间由
# **内存带宽** (memory-bandwidth-bound) 决定：权重字节减到 1/4（int8）或约 1/7（int4），读的时间跟着减少。
# 每种方法轮流测、测几轮 (interleaved rounds)，报告中位数和范围（做法见 4.0.6 第 1 节）：负载的波动落在范围里，而不是悄悄变成一个错的数。
# 快速模式 (quick mode) 下用 d256 × 4 层的小配置，只为检查代码能跑。

# %%
from course_lib.lab.measure import quantized_decode_speed, speed_config

cfg = speed_config()
print(f"speed model: d{cfg.d_model} x {cfg.n_layers} layers, {cfg.n_heads}/{cfg.n_kv_heads} heads, "
      f"{DIYModel(cfg).num_parameters() / 1e6:.1f}M params, torch threads: {torch.get_num_threads()}")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    big_rows = quantized_decode_speed(cfg, batch_sizes=(1, 8), new_tokens=pick(16, 4), rounds=pick(3, 1))
print_table(big_rows, ["method", "batch_size", "decode_tok_s", "min", "max", "vs_fp32"])
big = {(r["method"], r["batch_size"]): r for r in big_rows}
print(f"batch 1: int8 x{big['int8', 1]['vs_fp32']:.2f} (range {big['int8', 1]['min']:.0f}-{big['int8', 1]['max']:.0f} tok/s), "
      f"int4 x{big['int4', 1]['vs_fp32']:.2f} of fp32 "
      f"({ref_params / 1e6:.1f}M reference model above: int8 x{by['int8']['decode_ratio_b1']:.2f}, int4 x{by['int4']['decode_ratio_b1']:.2f})")
for m in ("int8", "int4", "dynamic-int8"):
    b1, b8 = big[m, 1]["vs_fp32"], big[m, 8]["vs_fp32"]
    print(f"{m:>12}: x{b1:.2f} of fp32 at batch 1 -> x{b8:.2f} at batch 8 "
          f"(the advantage {'shrinks' if b8 < b1 else 'grows'} as the batch grows)")
if not quick_mode():   # the direction the text states: on the bandwidth-bound model the packed kernels beat fp32 at batch 1
    assert big["int8", 1]["vs_fp32"] > 1.0 and big["int4", 1]["vs_fp32"] > 1.0, big_rows

# %% [markdown]
# **怎么读**：看 `vs_fp32` 列和 `min`/`max` 范围。在大模型、batch 1 上，打包 kernel 的 int8 / int4 比 fp32 快（上面的断言在完整模式下检查了这一点；
# 倍数随机器的内存带宽和负载变化，范围宽说明测量时机器忙）。表下 `batch 1:` 那一行把它和上面参考模型的
# `decode_ratio_b1` 并排放着：参考模型上两种方法的方向不一致，在这个读权重占主导的大模型上两者都比 fp32 快。
# 最后三行比较 batch 1 和 batch 8：batch 8 时每读一次权重要服务 8 个 token，计算的比重上来了。只量化权重的 int8 / int4
# (weight-only) 省的是读权重的字节，计算比重越大，这份节省越不显眼；动态量化 (`dynamic-int8`) 把激活也量化，用 int8 做矩阵乘法本身，
# 省的是计算，所以 batch 变大时它的相对优势不一定缩小。打印出的 shrinks / grows 是这台机器这次测到的方向。

# ## 4b. bitsandbytes：LLM.int8() 与 NF4（只在 CUDA 上运行）
#
# 学习计划提到的 `bitsandbytes` 是 Hugging Face 生态里最常用的量化库（`load_in_8bit=True` / `load_in_4bit=True` 背后就是它），只支持 GPU：
# - **LLM.int8()**：按行 absmax 把权重量化成 int8；激活里少数**离群特征维** (outlier features，幅值 > 6) 拆出来用 fp16 算，其余用 int8 矩阵乘法，
#   所以大模型量化到 8 位几乎不掉点。它省显存，但因为要拆分离群值，速度通常**不**比 fp16 快（LLM.int8() 论文和 bitsandbytes 文档的说法；这里没有 GPU，测不了）。
# - **NF4**（QLoRA 提出）：4 位的「正态浮点」——16 个量化格点按标准正态分布的分位数放置，正好匹配近似正态分布的权重；按 64 个值一组的
#   absmax 缩放，缩放系数本身再量化一次（double quantization）。本课的 int4 是均匀格点 + 分组 scale，思路相同、格点不同。
#
# 下面的单元格在有 CUDA 且装了 bitsandbytes 时运行（`pip install bitsandbytes`），否则只打印跳过的原因。
# 编写本课程时没有 GPU，这个单元格的 CUDA 分支没有在这里运行过。

# %%
import importlib.util

if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
    print("bitsandbytes demo skipped: it needs a CUDA GPU and `pip install bitsandbytes`")
else:
    import bitsandbytes as bnb
    lin = torch.nn.Linear(1024, 1024, bias=False).half().cuda()
    xb = torch.randn(8, 1024, dtype=torch.float16, device="cuda")
    ref = lin(xb)
    int8 = bnb.nn.Linear8bitLt(1024, 1024, bias=False, has_fp16_weights=False, threshold=6.0)
    int8.load_state_dict(lin.state_dict()); int8 = int8.cuda()     # quantized when moved to the GPU
    nf4 = bnb.nn.Linear4bit(1024, 1024, bias=False, quant_type="nf4", compute_dtype=torch.float16)
    nf4.load_state_dict(lin.state_dict()); nf4 = nf4.cuda()
    for name, layer in (("LLM.int8()", int8), ("NF4", nf4)):
        err = (layer(xb).float() - ref.float()).norm() / ref.float().norm()
        print(f"{name}: relative output error {err:.4f}")

# %% [markdown]
# ## 5. 保存与加载量化模型
#
# `save_quantized` 写 safetensors（int8 / 打包 uint8 张量 + fp32 scale）和带 `quantization` 段的 config.json；
# `load_quantized` 按配置重建量化结构、核对名字/形状/dtype 后载入。

# %%
import tempfile
from pathlib import Path

from course_lib.generate import generate_text
from course_lib.quantize import load_quantized, quantize_model, save_quantized

q4 = quantize_model(model, "gptq-int4", 64, calibration=calib)
d = Path(tempfile.mkdtemp()) / "gptq-int4"
save_quantized(q4, d, tok)
q4b, _, meta = load_quantized(d)
print(meta["quantization"], "| files:", {p.name: p.stat().st_size for p in d.iterdir()})
print("fp32:", repr(generate_text(model, tok, "def __init__(self", 50)))
print("int4:", repr(generate_text(q4b, tok, "def __init__(self", 50)))

# %% [markdown]
# ## 小结
#
# - 量化 = 小整数 + 缩放因子。int8 逐通道几乎无损；int4 需要分组，RTN 有代价，GPTQ 用校准数据做误差补偿减小代价。
# - 作用：**省内存/显存**（确定的收益）；**加速**要有低比特 kernel，在内存带宽是瓶颈的大模型上才测得稳（4c）——要量，不要假设。
# - `torch.ao.quantization.quantize_dynamic` 仍能用但已弃用，新代码用 torchao 的 `quantize_`。
#
# ## 练习
#
# 打开 `exercises/ex422_int8_quant.py`，实现 int8 逐通道量化与反量化：

# %%
from course_lib.lab.grading import check
result = check("4.2.2")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.2")   # 预测题在第 4 节的对比表之前已经问过

# %% [markdown]
# ## 下一步
#
# 模型权重变小了，但生成时还有另一块随上下文增长的内存：KV 缓存。4.2.3 就来看它。
