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
# # 99 · 综合项目 (capstone)：把阶段四串起来
#
# **学习目标**：在默认数据上把整个阶段四从头跑一遍，并让每一条「阶段四汇总」里的结果都由一个真实的检查打勾：
#
# 1. 一次带 warmup、梯度裁剪 (gradient clipping)、梯度累积 (gradient accumulation)、日志和 checkpoint 的训练，
#    中途被 `SIGKILL` 杀掉，再用**同一条命令**重启后自动恢复 (automatic resume)，最终权重与不中断的训练逐位相同；
# 2. 同一个入口用 `torchrun` 起 2 个进程做 DDP（CPU 上用 gloo）；
# 3. 从训练 checkpoint 导出推理产物 (inference artefact：`model.safetensors` + `config.json`)，在**新进程**里加载并生成；
# 4. int8 量化 (quantization)：体积和困惑度 (perplexity) 对比；
# 5. 带 KV cache 的批量生成 (batched generation)：左填充 (left padding) 的批量结果与逐条生成一致。
#
# **前置知识**：4.0.1–4.2.4 全部课程（这里只调用 `course_lib`，不再讲原理）。
#
# **预计时间**：运行{{run_time}}。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import subprocess
import sys

import torch

from course_lib.checkpoint import CheckpointManager
from course_lib.config import pick
from course_lib.data import load_corpus, split_tokens, tokenize_corpus
from course_lib.lab.demo import sample_text
from course_lib.export import export_from_run, load_inference
from course_lib.generate import generate, left_pad
from course_lib.monitor import last_per_step, read_jsonl
from course_lib.lab.paths import repo_root, runs_dir
from course_lib.lab.plotting import new_axes, print_table
from course_lib.quantize import model_nbytes, perplexity, quantize_model
from course_lib.lab.progress_bars import watch_steps
from course_lib.lab.runner import run, run_and_kill, torchrun_train_command, train_command

checks = {}  # outcome -> (passed, evidence)


def tick(key, passed, evidence):
    checks[key] = (bool(passed), evidence)
    print(("✓ " if passed else "✗ ") + key + " — " + evidence)


base = runs_dir("99-capstone", fresh=True)
STEPS = pick(240, 24)
FLAGS = dict(max_steps=STEPS, warmup_steps=pick(30, 4), schedule="cosine", lr=3e-3, min_lr=3e-4,
             grad_clip=1.0, batch_size=8, accumulation_steps=2, ckpt_interval=pick(40, 4), keep_last=2,
             log_interval=pick(10, 2), eval_interval=pick(60, 8), tensorboard=True, seed=1337)
print(" ".join(train_command(base / "run", **FLAGS)[1:]))

# %% [markdown]
# ## 1. 训练、被杀、自动恢复
#
# 先在后台启动训练，日志里出现第 `STEPS/2` 步后立刻 `SIGKILL`（整个进程组，不给任何清理机会）；
# 然后**原样再运行一次同一条命令**：`Trainer` 在 `out_dir` 里找到最新的完整 checkpoint，恢复模型、优化器、
# 学习率调度器、RNG 状态和数据位置，从那一步继续。最后和一次从未中断的训练比较最终权重。

# %%
with watch_steps(base / "run", pick(STEPS // 2, 6), "train until SIGKILL"):
    killed = run_and_kill(train_command(base / "run", **FLAGS), base / "run", kill_after_step=pick(STEPS // 2, 6))
print(f"first attempt: exit code {killed.returncode} (killed={killed.killed}), last logged step {killed.last_logged_step}")
with watch_steps(base / "run", STEPS, "same command again"):
    resumed = run(train_command(base / "run", **FLAGS), base / "run")
print(resumed.tail(3))
with watch_steps(base / "reference", STEPS, "uninterrupted"):
    reference = run(train_command(base / "reference", **FLAGS), base / "reference")
print(reference.tail(1))

mgr_a, mgr_b = CheckpointManager(base / "run", verbose=False), CheckpointManager(base / "reference", verbose=False)
final_a, final_b = mgr_a.load(mgr_a.latest()), mgr_b.load(mgr_b.latest())
same = all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_b["model"])
resumed_line = next((l for l in resumed.output.splitlines() if "resumed from" in l), "")
tick("4.0 checkpoint 恢复", killed.killed and "resumed from" in resumed_line and same,
     f"{resumed_line.split('] ')[-1]}; final weights bitwise-identical to the uninterrupted run: {same}")
kept = mgr_a.list_complete()
tick("4.1 checkpoint 管理（每 N 步保存、保留最近 K 个）", len(kept) <= FLAGS["keep_last"] and kept[-1][0] == STEPS,
     f"checkpoints on disk: {[s for s, _ in kept]} (keep_last={FLAGS['keep_last']})")

# %% [markdown]
# ## 2. 日志、warmup 与梯度裁剪：从 `metrics.jsonl` 读出来看
#
# 被杀的那次训练和恢复后的训练写的是同一个 `metrics.jsonl`，重做的那几步记了两次；和 4.0.1 第 2 节一样，
# 画图时每一步取最后一条记录。

# %%
def curve(path, key):
    return [(r["step"], r[key]) for r in last_per_step(read_jsonl(path / "metrics.jsonl"), key) if r[key] is not None]


fig, (ax1, ax2) = new_axes("Capstone run: killed + resumed vs uninterrupted", "optimizer step", "train loss", ncols=2)
for name, style in (("reference", "-"), ("run", "--")):
    steps, loss = zip(*curve(base / name, "loss"), strict=True)
    ax1.plot(steps, loss, style, label="uninterrupted" if name == "reference" else "killed + resumed")
ax1.axvline(killed.last_logged_step, color="red", lw=1, ls=":", label="SIGKILL")
ax1.legend()
steps, lr = zip(*curve(base / "run", "lr"), strict=True)
ax2.plot(steps, lr, color="tab:green")
ax2.set_ylabel("learning rate")
ax2.set_title("lr: warmup then cosine decay")
fig.tight_layout()

lrs = dict(curve(base / "run", "lr"))
norms = [v for _, v in curve(base / "run", "grad_norm")]
tb_files = list((base / "run" / "tb").glob("events.out.tfevents.*"))
tick("4.0 warmup", lrs[min(lrs)] < lrs[min(s for s in lrs if s > FLAGS["warmup_steps"])],
     f"lr at step {min(lrs)} = {lrs[min(lrs)]:.2e}, after warmup = {max(lrs.values()):.2e}")
tick("4.0 梯度裁剪", FLAGS["grad_clip"] > 0 and len(norms) > 0,
     f"grad_clip={FLAGS['grad_clip']}, grad-norm logged {len(norms)} times (max {max(norms):.2f}, pre-clip)")
tick("4.0 日志与监控", len(tb_files) > 0 and len(norms) > 0,
     f"metrics.jsonl with loss/lr/grad_norm/tokens_per_s, {len(tb_files)} TensorBoard event file(s)")

# %% [markdown]
# ## 3. 同一个入口，2 个进程的 DDP
#
# `torchrun --standalone --nproc_per_node=2 -m course_lib.train`：每个进程从环境变量读到自己的 rank，
# CPU 上用 gloo 后端；数据按 rank 分片，只有 rank 0 写日志和 checkpoint。

# %%
ddp_flags = dict(FLAGS, max_steps=pick(20, 6), warmup_steps=pick(5, 2), ckpt_interval=pick(10, 3),
                 eval_interval=pick(10, 3), tensorboard=False)
ddp = run(torchrun_train_command(2, base / "ddp", **ddp_flags), base / "ddp")
print("\n".join(l for l in ddp.output.splitlines() if l.startswith(("[train]", "error")))[-1500:])
ddp_ckpt = CheckpointManager(base / "ddp", verbose=False).latest()
ddp_state = CheckpointManager(base / "ddp", verbose=False).load(ddp_ckpt) if ddp_ckpt else {}
tick("4.1 DDP（torchrun 启动，2 进程）", ddp.returncode == 0 and ddp_state.get("world_size") == 2,
     f"exit code {ddp.returncode}, checkpoint {ddp_ckpt.name if ddp_ckpt else None} written by world_size={ddp_state.get('world_size')}")
tick("4.1 梯度累积", final_a["config"]["train"]["accumulation_steps"] == 2,
     "accumulation_steps=2 in the run above: 2 micro-batches of 8 per optimizer step")

# %% [markdown]
# ## 4. 推理产物：只有权重和配置，在新进程里加载
#
# 训练 checkpoint 里有优化器状态、RNG、数据位置——继续训练要它们，推理不要。导出的推理产物只有
# `model.safetensors`（不经过 pickle）和 `config.json`（模型结构 + tokenizer 描述）。
# 新进程用采样生成（温度 0.8、top-k 40、固定种子 0，遇到空行停）：同一个种子、同一份权重，两边写出同一段文本——逐字相同才算通过。
# 这里只比较、不展示文本（这个模型只训练了几百步）；训练了 3000 步的参考模型写的代码，4.2.1 第 4 节展示过。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`；测量之后揭晓）：

# %%
from course_lib.lab.quiz import predict

p = predict("99", "checkpoint_over_artifact")

# %%
art = base / "artifact"
info = export_from_run(base / "run", art)
ckpt_bytes = (mgr_a.latest() / "state.pt").stat().st_size
art_bytes = sum(p.stat().st_size for p in art.iterdir())
print_table([{"artefact": "training checkpoint (state.pt)", "bytes": ckpt_bytes},
             {"artefact": "inference (safetensors + config.json)", "bytes": art_bytes}])

model, tok, meta = load_inference(art)
prompt = "def "
here = sample_text(model, tok, prompt, 120, seed=0)   # temperature 0.8, top-k 40, stop at a blank line
code = (f"import sys, torch; torch.set_num_threads({torch.get_num_threads()});"   # same threads: same float sums
        "from course_lib.export import load_inference; from course_lib.lab.demo import sample_text;"
        "m, t, _ = load_inference(sys.argv[1]); print(ascii(sample_text(m, t, 'def ', 120, seed=0)))")   # ascii(): no newline or encoding surprises
fresh = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, cwd=repo_root())
print(fresh.stderr[-500:], end="")
same = fresh.stdout.strip() == ascii(here)
print(f"{len(here)} characters sampled after {prompt!r} in this process; the fresh process's text is identical: {same}")
tick("4.2 训练 checkpoint 与推理权重分开保存和加载", fresh.returncode == 0 and same,
     f"fresh process sampled the same text (same seed); artefact {art_bytes:,} B vs checkpoint {ckpt_bytes:,} B")

# %%
p.reveal(ckpt_bytes / art_bytes)

# %% [markdown]
# ## 5. int8 量化：体积与质量

# %%
val = split_tokens(tokenize_corpus(load_corpus("stdlib")), 0.05)[1]
q8 = quantize_model(model, "int8")
ppl32 = perplexity(model, val, seq_len=128, max_batches=pick(20, 4))
ppl8 = perplexity(q8, val, seq_len=128, max_batches=pick(20, 4))
size32, size8 = model_nbytes(model), model_nbytes(q8)
print_table([{"model": "fp32", "bytes": size32, "size ratio": 1.0, "perplexity": ppl32},
             {"model": "int8 (per-channel)", "bytes": size8, "size ratio": size8 / size32, "perplexity": ppl8}])
tick("4.2 量化", size8 / size32 <= 0.3 and ppl8 <= ppl32 * 1.01,
     f"int8 size {size8 / size32:.2f}x of fp32, perplexity {ppl32:.3f} -> {ppl8:.3f} ({(ppl8 / ppl32 - 1) * 100:+.2f}%)")

# %% [markdown]
# ## 6. 带 KV cache 的批量生成

# %%
prompts = ["def ", "import os\n", "class Config:\n    def __init__(self", "# 中文注释\n"]
ids, mask = left_pad([tok.encode(p) for p in prompts], tok.pad_id)
batched = generate(model, ids, 24, attention_mask=mask, eos_id=tok.eos_id, pad_id=tok.pad_id)
alone = [generate(model, torch.tensor([tok.encode(p)]), 24, eos_id=tok.eos_id, pad_id=tok.pad_id)[0] for p in prompts]
no_cache = generate(model, ids, 24, attention_mask=mask, eos_id=tok.eos_id, pad_id=tok.pad_id, use_cache=False)
same_batch = all(torch.equal(batched[i, :len(a)], a) for i, a in enumerate(alone))
same_cache = torch.equal(batched, no_cache)
# greedy here on purpose: the check is "batched == each alone, token for token", and greedy has no random draws
for p, row, a in zip(prompts, batched.tolist(), alone, strict=True):
    print(f"{p!r:45} {len(a)} new tokens, batched row identical: {row[:len(a)] == a.tolist()}")
tick("4.2 KV cache 与批量推理", same_batch and same_cache,
     f"left-padded batch of {len(prompts)} == each alone: {same_batch}; cached == uncached: {same_cache}")

# %% [markdown]
# ## 7. 把你阶段三的模型接进来 (bring your own model)
#
# 上面每一步用的都是课程的 `DIYModel`，但 `Trainer`、`generate`、推理引擎和导出只依赖 `course_lib/protocol.py` 里的协议
# `CausalLM`：`forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, targets)` 返回 `.logits` 和 `.loss`
# （`targets` 已与输入对齐，`-100` 忽略），`config` 里有 `vocab_size` 和 `max_seq_len`，`state_dict()` 能原样加载回去。
# 阶段三的模型通常长得像 nanoGPT：`forward(idx, targets=None) -> (logits, loss)`。这样的模型用 `PlainCausalLM` 包一层就能接进来；
# 它没有接课程的 KV cache，所以生成走「重算」模式（每步重算整段序列：结果正确，但没有加速，也不能进推理引擎）。
# 想要 KV cache 和推理引擎，就让注意力调用 `cache.update(layer, k, v)`（README「把你阶段三的模型接进来」一节）。
# 命令行同样可以：`python -m course_lib.train --model-class 你的包.模块:类名 --model-kwargs '{...}'`，kill 之后原样重跑也会逐位恢复
# （`tests/unit/test_protocol.py` 用 HF 的 `LlamaForCausalLM` 和一个 nanoGPT 风格的 GPT 测了这一整条路）。

# %%
import contextlib
import io

import torch.nn as nn
import torch.nn.functional as F

from course_lib.config import TrainConfig
from course_lib.data import ByteTokenizer
from course_lib.protocol import CausalLM, ModelSpec, PlainCausalLM
from course_lib.train import Trainer


class Stage3GPT(nn.Module):
    """A stage-3 style model (the learner's, not course code): nanoGPT's forward signature."""

    def __init__(self, vocab_size=258, block_size=64, n_embd=64, n_layer=2, n_head=4):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        x = self.blocks(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)), mask=causal, is_causal=True)
        logits = self.lm_head(x)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def my_model(**kw):
    return PlainCausalLM(Stage3GPT(**kw), vocab_size=kw.get("vocab_size", 258), max_seq_len=kw.get("block_size", 64))


spec = ModelSpec(my_model, dict(block_size=64, n_embd=pick(64, 32), n_layer=2))
own_cfg = TrainConfig.default(max_steps=pick(80, 8), seq_len=64, batch_size=8, warmup_steps=pick(8, 2),
                              ckpt_interval=pick(40, 4), eval_interval=pick(40, 4), out_dir=str(base / "own_model"),
                              tensorboard=False)
own = Trainer(spec, own_cfg, console=False)
print("follows the CausalLM protocol:", isinstance(own.model, CausalLM), "| stored as", own.model.course_spec["class"])
own_hist = own.fit()
with contextlib.redirect_stdout(io.StringIO()):   # its "[train] resumed from <folder>" line names a local path
    again = Trainer(spec, own_cfg, console=False)  # same folder: resumes from the last checkpoint
same_state = all(torch.equal(a, b) for a, b in zip(own.model.state_dict().values(), again.model.state_dict().values(),
                                                     strict=True))
btok = ByteTokenizer()
prompt = torch.tensor([btok.encode("def ")])
own_cached = generate(own.model.eval(), prompt, 32)
own_plain = generate(own.model, prompt, 32, use_cache=False)
print(f"loss {own_hist[0]['loss']:.3f} -> {own_hist[-1]['loss']:.3f} in {len(own_hist)} steps; "
      f"resumed at step {again.step}, state identical: {same_state}; "
      f"generate with / without cache identical: {torch.equal(own_cached, own_plain)}")
print(repr("def " + btok.decode(own_cached[0].tolist())))

# %% [markdown]
# ## 阶段四结果清单 (stage-4 outcome checklist)
#
# 下表就是学习计划「阶段四汇总」的每一条，每一条都由上面某个真实的检查决定打勾与否。

# %%
# NBVAL_CHECK_OUTPUT
for key, (ok, _) in checks.items():
    print(("[x] " if ok else "[ ] ") + key)
print(f"{sum(ok for ok, _ in checks.values())}/{len(checks)} outcomes checked")

# %% [markdown]
# ## 小结
#
# - 同一条训练命令，被杀后原样重跑就能接着训练，最终权重逐位相同：前提是 checkpoint 里有**全部**状态
#   （模型、优化器、调度器、RNG、数据位置），并且保存是原子的。
# - DDP 用的是同一个入口和同一个训练循环，只多了 torchrun 给的环境变量。
# - 推理产物和训练 checkpoint 是两种文件：一个给继续训练，一个给部署。
# - 量化、KV cache、批量推理都由「与基线逐 token / 逐位比较」来证明正确，由同一次运行里的测量来说明收益。
#
# ## 练习
#
# 这一课没有新的练习：用 `from course_lib.lab.grading import progress; progress()` 看看你在全部练习上的进度。
#
# 上面的清单用的是 `course_lib` 的 Trainer。你在 4.1.1 综合练习里自己写的训练脚本
# `exercises/ex411_train_script.py` 一旦通过评分，下一个单元就用它代替 Trainer 再做一次「杀掉 → 重跑 → 接着训练」：
# 先运行评分器；通过了才启动你的脚本，在第 20 步被 SIGKILL，再用同一条命令跑完 40 步。

# %%
from course_lib.lab.grading import check

mine = check("ex411_train_script", show=False)
if mine.passed:
    my_dir = runs_dir("99-capstone/my_script", fresh=True)
    my_cmd = [sys.executable, "exercises/ex411_train_script.py", "--out-dir", str(my_dir),
              "--max-steps", "40", "--save-every", "5", "--log-every", "2"]
    killed = run_and_kill(my_cmd, my_dir, kill_after_step=20, timeout=600)
    finished = run(my_cmd, my_dir, timeout=600)
    print(f"你的训练脚本通过了评分 ({mine.n_passed}/{mine.n_total})，这里用它代替 Trainer：")
    print(f"  第一次运行在第 {killed.last_logged_step} 步被 SIGKILL（退出码 {killed.returncode}）；")
    print(f"  同一条命令重跑：退出码 {finished.returncode}，"
          f"{'写出了' if (my_dir / 'final_model.safetensors').exists() else '没有写出'} final_model.safetensors。")
else:
    print(f"你的训练脚本还没有通过评分（{mine.summary()}）：这里先跳过。"
          "在 4.1.1 完成 exercises/ex411_train_script.py，通过 check(\"ex411_train_script\") 后再运行这个单元。")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("99")   # 预测题在第 4 节之前已经问过

# %% [markdown]
# ## 下一步
#
# - 把 `FLAGS` 换成你自己的数据 (`data="path/to/your.jsonl"`) 和更大的模型，再跑一遍清单。
# - 在有 GPU 的机器上运行：同一个 notebook 会自动用 CUDA，`torchrun` 会改用 nccl。
# - `make benchmarks` 会在你的机器上重新测量所有基准，写进 `BENCHMARKS.md`。
