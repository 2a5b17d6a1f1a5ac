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
# # 4.2.1 · 推理产物：仅权重 + 配置 (inference artefacts)
#
# **学习目标**
# - 从训练检查点 (training checkpoint) 导出 `model.safetensors` + `config.json`，说清两者各装了什么、各有多大；
# - 在一个**全新的进程**里按配置构建模型、加载权重并生成文本；
# - 理解为什么加载时要检查名字和形状、为什么绝不 unpickle，以及共享权重 (tied weights) 怎么存；
# - 导出成 Hugging Face Llama 格式，让 `transformers` 直接加载，并验证 logits 一致。
#
# **前置知识**：4.0.1 的检查点；`DIYModel` 的结构（RMSNorm、RoPE、GQA）。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 40 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import json, subprocess, sys

import torch

from course_lib.config import ModelConfig, TrainConfig, pick
from course_lib.lab.demo import sample_text, show_sample
from course_lib.export import (describe_checkpoint, export_from_run, export_hf_llama, load_inference, save_inference,
                               ExportError)
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import print_table
from course_lib.monitor import ProgressBar
from course_lib.train import Trainer

torch.manual_seed(0);

# %% [markdown]
# ## 1. 先有一个训练检查点
#
# 用 4.0 的 `Trainer` 训练一小会儿（quick 模式更短），得到一个训练检查点。课程还附带一个**真正训练过**的参考模型
# (`course_lib/assets/reference_model/`)，它就是用同一个命令训练、再用本课的 `export_from_run` 导出的，第 5 节会用它。

# %%
run = runs_dir("4.2.1-export", fresh=True)
mc = ModelConfig.small()
tc = TrainConfig.default(max_steps=pick(60, 10), ckpt_interval=pick(60, 10), eval_interval=pick(60, 10),
                         out_dir=str(run / "train"), tensorboard=False, device="cpu")
trainer = Trainer(mc, tc, callbacks=[ProgressBar("train")], console=False)
hist = trainer.fit()
print(f"trained {hist[-1]['step']} steps, loss {hist[0]['loss']:.2f} -> {hist[-1]['loss']:.2f}")

# %% [markdown]
# ## 2. 训练检查点里有什么？
#
# 检查点要能**继续训练**：除了权重，还有 AdamW 的两个动量 (moments)（每个都和权重一样大）、学习率调度器、
# 所有 rank 的随机数状态 (RNG state)、数据位置。推理只需要权重和「怎么搭出这个模型」的描述。

# %%
from course_lib.checkpoint import CheckpointManager

state, ckpt_dir = CheckpointManager(run / "train", verbose=False).load_latest()
parts = describe_checkpoint(state)
print_table([{"entry": k, "tensor_MB": v / 1e6} for k, v in parts.items()])
print("state.pt on disk:", round((ckpt_dir / "state.pt").stat().st_size / 1e6, 2), "MB")

# %% [markdown]
# ## 3. 导出：`model.safetensors` + `config.json`
#
# `export_from_run` 读取最新的完整检查点，只取权重，写出两个文件。safetensors 是「JSON 头 + 原始张量字节」，
# 读取时不执行任何代码；完整的 pickle 加载会执行文件里的代码（4.0.1 第 4 节演示过），所以推理产物一律用 safetensors。
#
# **共享权重**：`lm_head.weight` 和 `embed_tokens.weight` 是同一个张量。safetensors 故意拒绝保存共享内存的张量
# （加载方无从知道它们要保持共享），所以我们只存一次 `embed_tokens.weight`，在 `config.json` 里记下
# `tied_weights`，按配置构建的模型会自己重新绑定。先看看直接保存会怎样：

# %%
from safetensors.torch import save_file

try:
    save_file(dict(trainer.model.state_dict()), str(run / "naive.safetensors"))
except RuntimeError as e:
    print("safetensors refuses:", " ".join(str(e).split())[:300])

# %%
art = run / "artifact"
info = export_from_run(run / "train", art)
print(json.dumps(json.loads((art / "config.json").read_text()), indent=1)[:900])

# %% [markdown]
# 导出的文件和训练检查点比，有多大？
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.2.1", "artifact_vs_checkpoint")

# %%
rows = [{"file": "training checkpoint state.pt", "MB": (ckpt_dir / "state.pt").stat().st_size / 1e6},
        {"file": "model.safetensors", "MB": (art / "model.safetensors").stat().st_size / 1e6},
        {"file": "config.json", "MB": (art / "config.json").stat().st_size / 1e6}]
for r in rows:
    r["vs_checkpoint"] = r["MB"] / rows[0]["MB"]
print_table(rows)

# %%
p.reveal(rows[1]["vs_checkpoint"])

# %% [markdown]
# 推理产物约为检查点的 1/3：少了 AdamW 的两份动量和其它训练状态。

# %% [markdown]
# ## 4. 在全新的进程里加载并生成
#
# 这才是「能在新脚本中加载并生成」的证明：一个独立的 Python 进程，只拿到这个文件夹。
#
# 新进程先加载刚导出的产物，用同一个随机种子生成，和本进程的结果逐字比较：相同，才说明配置和权重都完整地到了新进程。
# 这个模型只训练了几十步，写出的只是一串「形状像代码」的字节，所以只比较、不展示；同一个新进程接着用同一个
# `load_inference` 加载课程附带的参考模型（也是 `export_from_run` 导出的产物文件夹），把它写的代码打印出来。
#
# 生成用的是人实际会用的采样设置 (sampling)：温度 (temperature) 0.8、top-k 40、固定随机种子 (seed)，遇到空行（两个换行）或 EOS 就停。
# 贪心解码 (greedy decoding) 每步都选概率最大的 token，小模型很容易陷进重复（4.2.3 第 1 节参考模型的贪心输出就是
# `'protocol, protocol, '`）；采样靠随机性跳出来，固定种子让结果可复现。

# %%
# DEMO_TEXT
here = sample_text(trainer.model, trainer.tokenizer, "def ", 120, seed=0)
script = f"""
import torch
torch.set_num_threads({torch.get_num_threads()})   # the same threads as here: the same float sums, the same samples
from course_lib.export import load_inference
from course_lib.lab.demo import sample_text, show_sample
from course_lib.pretrained import REFERENCE_DIR
model, tok, meta = load_inference(r"{art}")
print("built", type(model).__name__, "from config:", meta["model"]["n_layers"], "layers,", model.num_parameters(), "params")
print("same sampled text as the training process:", sample_text(model, tok, "def ", 120, seed=0) == {here!r})
ref, ref_tok, _ = load_inference(REFERENCE_DIR)
show_sample(ref, ref_tok, "def __init__(self", 160, seed=0)
"""
out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
print(out.stdout + out.stderr[-500:], end="")
assert "same sampled text as the training process: True" in out.stdout, out.stdout + out.stderr[-500:]

# %% [markdown]
# ### 配置和权重对不上时
#
# 加载先按配置建模型，再逐个比较张量名和形状；不一致就报错，并写出是哪些张量、各是什么形状。

# %%
bad = run / "bad"
save_inference(trainer.model, bad)
meta = json.loads((bad / "config.json").read_text())
meta["model"]["n_layers"] += 1
meta["model"]["d_model"] //= 2
(bad / "config.json").write_text(json.dumps(meta))
try:
    load_inference(bad)
except ExportError as e:
    print(str(e)[:700])

# %% [markdown]
# ## 5. 参考模型与 Hugging Face Llama 格式
#
# `DIYModel` 的参数名本来就跟 HF 的 `LlamaForCausalLM` 一样，RoPE 也是 HF 的 rotate-half 布局，所以导出只需要：
# 权重名加上 `model.` 前缀，配置翻译成 Llama 的字段（`hidden_size`、`num_key_value_heads`、`tie_word_embeddings`……）。
# 然后让 `transformers` 加载它，在同一输入上比较 logits（测试 `tests/unit/test_hf_export.py` 要求差 ≤ 1e-4）。

# %%
# DEMO_TEXT
from course_lib.pretrained import load_reference_model, reference_info

ref, tok = load_reference_model()
rinfo = reference_info()
print("reference model:", ref.num_parameters(), "params; trained with:\n ", rinfo["command"])
print("final eval loss:", round(rinfo["final_eval_loss"], 4), "| data sha256:", rinfo["data"]["sha256"][:16])
show_sample(ref, tok, "    def forward(self, x):\n", 160, seed=1);

# %%
hf_dir = export_hf_llama(ref, run / "hf-llama", tok)
print(sorted(p.name for p in hf_dir.iterdir()))
try:
    import transformers
    transformers.utils.logging.disable_progress_bar()   # a saved progress bar would show a frozen "0%"
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("import os\nimport sys\n\ndef main(")])
    with torch.no_grad():
        diff = (hf(ids).logits - ref(ids).logits).abs().max().item()
    print(f"{type(hf).__name__}: max |logit difference| = {diff:.2e}  (<= 1e-4: {diff <= 1e-4})")
except ImportError:
    print("transformers is not installed: pip install transformers to run this comparison")

# %% [markdown]
# ## 小结
#
# - 训练检查点 = 继续训练所需的一切（权重 + 优化器 + 调度器 + RNG + 数据位置）；推理产物 = 权重 + 配置，约 1/3 大小。
# - 加载推理产物：读 `config.json` → 建模型 → 读 safetensors → 核对名字和形状 → 载入。全程不 unpickle。
# - 共享权重只存一次，在配置里记录；HF 用 `tie_word_embeddings` 做同样的事。
# - 参数名与 HF 对齐，导出 HF 格式就是改名 + 翻译配置，logits 与 `transformers` 一致。
#
# ## 练习
#
# 打开 `exercises/ex421_inference_artifact.py`，实现 `save_artifact` / `load_artifact`，然后运行：

# %%
from course_lib.lab.grading import check
result = check("4.2.1")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.2.1")   # 预测题在第 3 节的大小比较之前已经问过

# %% [markdown]
# ## 下一步
#
# 有了可移植的推理产物，4.2.2 把它量化成 int8 / int4：文件更小、内存更少——速度呢？我们去量一下。
