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
# # 4.1.7 · BPE 分词器与 SFT：从训练到聊天
#
# **学习目标**
# - 用 Hugging Face `tokenizers` 在课程语料上几秒钟训练一个字节级 BPE 分词器 (byte-level BPE tokenizer)，
#   实测它和字节分词器在中文、英文、代码上每个字符各要几个 token；
# - 明白为什么两个分词器的 loss 只能按**每字节比特数** (bits per byte) 比较，并实测：同样的训练时间，哪个模型更好；
# - 把参考模型做监督微调 (supervised fine-tuning, SFT)：聊天模板 (chat template)、只在助手的回答上算 loss 的掩码 (loss mask)、
#   把几条对话打包 (packing) 进一行且互不可见；
# - 用 4.0 的标准要求 SFT：训练中途 `SIGKILL`，同一条命令重启后与不中断的训练**逐位相同**；
# - 导出、启动 OpenAI 兼容的服务，用官方 `openai` 客户端的 `chat.completions.create` 和它聊天（普通与流式）。
#
# **前置知识**：4.0.1 的检查点与恢复，4.2.1 的推理产物，4.2.5 的推理服务。
#
# **预计时间**：运行{{run_time}}，阅读与练习约 45 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import json
import time

import torch

from course_lib.config import pick
from course_lib.data import ByteTokenizer
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import print_table
from course_lib.lab.quiz import predict
from course_lib.lab.tokenizer_study import course_texts, equal_time_bits_per_byte, tokens_per_char
from course_lib.tokenizer import train_bpe

torch.manual_seed(0)
base = runs_dir("4.1.7", fresh=True)
texts = course_texts()
print({k: f"{v:,}" for k, v in texts["sizes"].items()})

# %% [markdown]
# ## 1. 训练一个 BPE 分词器
#
# 参考模型用的是字节分词器 `ByteTokenizer`：一个 token 就是一个 UTF-8 字节，不需要训练，也永远没有未知字符；
# 代价是一个汉字要 3 个 token，256 个 token 的上下文装不下多少中文。字节级 BPE（GPT-2、Llama 3、Qwen 都是）
# 从同样的 256 个字节出发，反复把语料里最常见的相邻两个 token **合并** (merge) 成一个新 token，直到词表有 `vocab_size` 项：
# 常见的词、常用的汉字成了一个 token，而任何字节序列仍然能编码。
#
# 语料 (corpus)：`course_texts()` 取本机就有的文本：Python 标准库的源码（按文件路径的哈希留出 5% 的文件，
# 留出文件里的 docstring 就是「英文」样本），和本课程各课的中文讲解（4.2.6 那一课留出作中文样本，其余参与训练）。
# `course_lib.tokenizer.train_bpe` 调用 `tokenizers` 的 Rust 训练器；命令行上同样一行：
#
# ```bash
# python -m course_lib.tokenizer --data stdlib --vocab-size 4096 --out tokenizer.json
# ```
#
# 特殊 token `<pad>` `<eos>` `<|im_start|>` `<|im_end|>` 各占一个 id，普通文本的合并永远产生不了它们。

# %%
t0 = time.perf_counter()
bpe = train_bpe(texts["train"], vocab_size=4096)
print(f"trained on {texts['sizes']['train_bytes'] / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s: "
      f"vocab_size {bpe.vocab_size}, special ids pad={bpe.pad_id} eos={bpe.eos_id} "
      f"<|im_start|>={bpe.im_start_id} <|im_end|>={bpe.im_end_id}")
bpe.save(base / "tokenizer.json")
for s in ["def forward(self, x):", "返回一个新的列表", "emoji 🙂 ok"]:
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s  # round trip, whatever the text
    print(f"{s!r:28} -> {len(ids):2} tokens {[bpe.decode([i]) for i in ids]}")

# %% [markdown]
# 最后一行：`🙂` 不在词表里，被拆成了几个字节 token，拼回来照样是原文（字节级 BPE 没有未知字符）；一个字节 token 单独
# 解码不是合法的 UTF-8，所以显示成 `�`。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`）：在留出的中文课文上，这个 BPE 平均每个字符要几个 token？
# 下一格测完以后揭晓。

# %%
p = predict("4.1.7", "bpe_zh_tokens_per_char")

# %%
tokenizers = {"bytes": ByteTokenizer(), "bpe": bpe}
rows = tokens_per_char(tokenizers, texts["heldout"])
print_table(rows)
bpe_zh = next(r["bpe tokens/char"] for r in rows if r["text"] == "zh")
ratio = {r["text"]: r["bpe/bytes"] for r in rows}
assert max(ratio.values()) < 1 and ratio["zh"] > max(ratio["en"], ratio["code"]), ratio
assert next(r["bytes/char"] for r in rows if r["text"] == "zh") < 3
pieces = [bpe.decode([i]) for i in range(4, bpe.vocab_size)]   # after the 4 special tokens
n_zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in pieces)
n_ascii = sum(t.isascii() for t in pieces)
print(f"vocab entries holding a Chinese character: {n_zh}; pure ASCII (English, code, spaces): {n_ascii}")
assert n_ascii > bpe.vocab_size / 2 > n_zh

# %%
p.reveal(bpe_zh)

# %% [markdown]
# **读表**：`bytes/char` 一列就是字节分词器每字符的 token 数：英文和代码每字符 1 个字节，中文课文里夹着英文术语和代码，
# 平均每字符不到 3 个字节。BPE 在三种文本上都省了 token（`bpe/bytes` 一列），代码和英文省得最多：
# 标准库占了语料的绝大部分，4096 个词表项大多给了英文单词、关键字和缩进（表下数了含汉字的和纯 ASCII 的词表项）。
# 你阶段三的中文语料训练出的 BPE，在中文上会省得多得多；用 `tokens_per_char` 在自己的分词器上测一测。
#
# ## 2. 同样的训练时间：字节模型 vs BPE 模型，按每字节比特数比较
#
# 每 token 的 loss 不能直接比：BPE 的一个 token 代表好几个字节，预测它本来就更难。两个模型预测的是**同一段文本**，
# 所以把总代价摊到字节上：
#
# $$\text{bits per byte} = \frac{\sum_{\text{留出 token}} \text{NLL (nats)}}{\ln 2 \times \text{这些 token 代表的 UTF-8 字节数}}$$
#
# （nanochat 的评估用的也是它。）`equal_time_bits_per_byte` 给每个分词器建一个同样结构的小 `DIYModel`
# （只有词嵌入表随词表变大），在同一份语料上训练**同样的墙钟时间** (wall-clock time)：两者轮流各跑 0.5 秒，
# 机器忙时两边一样慢；然后在留出的中文、英文、代码上算每字节比特数。

# %%
t0 = time.perf_counter()
trained = {}   # the two trained models, kept for section 3
bpb = equal_time_bits_per_byte(tokenizers, texts["train"], texts["heldout"], seconds=pick(40.0, 3.0), keep=trained)
print(f"both trained {bpb[0]['train s']} s each (interleaved), {time.perf_counter() - t0:.0f} s in all")
print_table(bpb)
by = {r["tokenizer"]: r for r in bpb}
for kind in texts["heldout"]:
    a, b = by["bytes"][f"bits/byte {kind}"], by["bpe"][f"bits/byte {kind}"]
    print(f"{kind:5}: bpe / bytes bits per byte = {b / a:.2f} ({'bpe' if b < a else 'bytes'} is better)")
assert by["bpe"]["tokens/s"] < by["bytes"]["tokens/s"]
print(f"per second: tokens bpe / bytes = {by['bpe']['tokens/s'] / by['bytes']['tokens/s']:.2f}, "
      f"text bytes bpe / bytes = {by['bpe']['text bytes/s'] / by['bytes']['text bytes/s']:.2f}")

# %% [markdown]
# **读表**：`tokens/s` 是每秒训练的 token 数，`text bytes/s` 是这些 token 代表的文本字节数。BPE 模型每个 token 要算
# 4096 维的输出 softmax，词嵌入表（与输出层共享）也大得多（`params` 一列的差几乎全是它），所以它每秒处理的 token 少；
# 但每个 token 装着好几个字节，上面打印了两者每秒读过的文本之比。训练窗口同样是 128 个 token，BPE 模型一次看到的文本多得多。
# 最后几列是结论：同样的时间，哪个模型在留出文本上每字节比特数更低（打印在表下）。中文一列要和第 1 节一起读：
# 训练语料里的中文只有两万多字（第一个代码单元格的 `train_zh_chars`），BPE 模型见到的每个中文 token 都很少。模型变大以后，词嵌入和输出层占的比例变小，
# BPE 每个 token 多出的这份代价也就相对变小。这个实验的时间预算只有几十秒，数字只代表本机这一次的测量。
#
# 下面回到参考模型：它是字节模型（它的产物里记着自己的分词器），SFT 保持它的分词器不变。
# `--init` 一个 BPE 模型时，SFT 和导出用的就是它的 `tokenizer.json`，命令不变。
#
# ## 3. SFT 的数据：聊天模板、损失掩码、打包
#
# SFT 的数据是一行一条对话的 JSONL，`{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}`
# （或 `{"prompt": ..., "response": ...}`）。本机不用下载就有的数据：标准库里有 docstring 的短函数，正反两个方向各一条指令：
# 「根据 docstring 写函数」和「用一句话解释这个函数」。整个函数按哈希留出 (held out)：留出的函数两个方向都不训练。

# %%
from course_lib.chat import render_chat
from course_lib.sft import IGNORE, encode_example, pack_examples, pad_examples, stdlib_instruction_pairs, write_jsonl

split = stdlib_instruction_pairs()
data_file = write_jsonl(split.train, base / "sft_train.jsonl")
print(f"{len(split.train)} training conversations -> {data_file.name}; {len(split.heldout)} held out "
      f"(from {len({r['source'] for r in split.heldout})} functions SFT never sees)")
ex = split.train[1]
print(json.dumps(ex["messages"], ensure_ascii=False)[:300])
print("---- rendered with the chat template ----")
print(render_chat(ex["messages"], add_generation_prompt=False))

# %% [markdown]
# 模板是 ChatML（Qwen 等用的格式）：每条消息 `<|im_start|>角色\n内容<|im_end|>\n`。`encode_chat` 逐段编码，
# 同时标出哪些 token 属于助手的回答（回答内容和结束它的 `<|im_end|>`：模型要学会停下），`encode_example`
# 再在末尾加上 `<eos>`，然后**错一位**：第 t 个输入的标签是第 t+1 个 token，下一个 token 不是助手的就设成 `-100`。
# 模型的 `cross_entropy(..., ignore_index=-100)` 跳过这些位置：提示照样作为输入，只是不被当作要学的东西。

# %%
tok = ByteTokenizer()   # the reference model's tokenizer
x, y = encode_example(ex["messages"], tok)
print(f"{len(x)} inputs, {sum(t != IGNORE for t in y)} of them have a label (trained), "
      f"{sum(t == IGNORE for t in y)} are -100")
print("the trained targets:", repr(tok.decode([t for t in y if t != IGNORE and t < 256])), "+ <eos>")

# %% [markdown]
# 一条对话通常远短于上下文。一条一行、右侧补 padding 时，很多位置在算 padding；**打包**把几条对话按顺序放进同一行，
# 每条有自己的 `document_id`，模型只在同一个文档里做注意力（块对角的因果掩码），位置编号在每个文档开头从 0 重新数起，
# 所以打包的一行和「每条单独一行」算出的每条对话的 loss 完全一样，只是不再浪费算力。
#
# 能省多少取决于对话和上下文的长短。先数一数：同样的训练对话，用字节分词器和第 1 节的 BPE 编码，
# 在 256 个 token 的行里打包（比 256 个 token 长的对话被丢掉而不是截断：截断会切掉回答；`--task sft` 也是这样做的）：

# %%
from course_lib.sft import packing_efficiency

per_row = {}
for name, t in tokenizers.items():
    exs = [e for e in (encode_example(r["messages"], t) for r in split.train) if len(e[0]) <= 256]
    lengths = sorted(len(e[0]) for e in exs)
    px, py, pdoc = pack_examples(exs, 256, t.pad_id)
    print(f"{name:5}: {len(exs)} conversations (median {lengths[len(lengths) // 2]} tokens) -> {px.shape[0]} packed rows "
          f"({len(exs) / px.shape[0]:.2f} per row); labelled positions: packed {packing_efficiency(py):.1%}, "
          f"one per row {packing_efficiency(pad_examples(exs, 256, t.pad_id)[1]):.1%}")
    per_row[name] = len(exs) / px.shape[0]
assert per_row["bytes"] < 1.2 and per_row["bpe"] > 2, per_row

# %% [markdown]
# 字节分词器下一条对话就占了大半行，256 个 token 的行里几乎放不下第二条，打包几乎不省什么；BPE 把同样的对话编得短得多，
# 一行能放好几条（上面打印了每行几条）。SFT 命令总是打包：对话短的时候省下的算力就是上面两列的差。
#
# 打包是否真的等于「每条单独一行」？拿第 2 节训练过的 BPE 小模型，对 BPE 编码的 64 条对话比较总 loss：

# %%
probe = trained["bpe"]
exs = [e for e in (encode_example(r["messages"], bpe) for r in split.train[:80]) if len(e[0]) <= 256][:64]
px, py, pdoc = pack_examples(exs, 256, bpe.pad_id)
qx, qy = pad_examples(exs, 256, bpe.pad_id)
ce = torch.nn.functional.cross_entropy
with torch.no_grad():
    tp = ce(probe(px, document_ids=pdoc).logits.flatten(0, 1), py.flatten(), ignore_index=IGNORE, reduction="none")
    tq = ce(probe(qx).logits.flatten(0, 1), qy.flatten(), ignore_index=IGNORE, reduction="none")
    tl = ce(probe(px).logits.flatten(0, 1), py.flatten(), ignore_index=IGNORE, reduction="none")
lp, lq, leak = tp.sum(), tq.sum(), tl.sum()
later = (pdoc.flatten() > 0) & (py.flatten() != IGNORE)   # trained tokens of the 2nd, 3rd, ... conversation of a row
print(f"{len(exs)} conversations in {px.shape[0]} packed rows vs {qx.shape[0]} padded rows")
print(f"summed loss: packed with document_ids {lp:.4f} | padded {lq:.4f}")
print(f"packed, plain causal attention: {leak:.4f}; largest change of one token's loss vs document_ids "
      f"{(tl - tp)[later].abs().max():.3f} (tokens of the row's first conversation: {(tl - tp)[~later].abs().max():.1e})")
assert torch.allclose(lp, lq, rtol=1e-5) and (tl - tp)[later].abs().max() > 1e-3

# %% [markdown]
# 打包 + `document_ids` 与 padding 的 loss 相同（只差浮点求和顺序）；忘了 `document_ids`、只用普通的因果注意力时，
# 每行第一条对话不受影响（它前面没有别的对话），后面的对话看得到前面的对话、位置也不再从 0 开始，它们的 loss 就变了。`tests/unit/test_sft.py` 逐条对话比较 token loss 和梯度。
# 练习 ex417 里你自己写这个整理函数 (collator)。
#
# ## 4. SFT 参考模型：训练中途 SIGKILL，同一条命令恢复，逐位相同
#
# SFT 就是 `python -m course_lib.train` 加三个参数：`--task sft`（数据按上面的方式打包、只算助手的 loss）、
# `--data` 一个 JSONL 文件、`--init` 起点模型（一个训练目录、一个推理产物，或 `reference` 即课程自带的参考模型）。
# 检查点、恢复、kill 测试与预训练完全相同：打包后的行是一个 `StreamingTokenDataset`，数据位置照样存进检查点。
# 文件最后 5%（`--val-fraction`）的对话留作验证集。

# %%
from course_lib.checkpoint import CheckpointManager
from course_lib.lab.progress_bars import watch_steps
from course_lib.lab.runner import run, run_and_kill, train_command

STEPS, INTERVAL, KILL_AFTER = pick(60, 4), pick(20, 2), pick(30, 3)

def sft_cmd(out_dir):
    return train_command(out_dir, task="sft", data=str(data_file), init="reference", seq_len=256, batch_size=pick(8, 4),
                         max_steps=STEPS, lr=1e-3, min_lr=1e-4, warmup_steps=pick(5, 2), schedule="cosine", weight_decay=0.1,
                         ckpt_interval=INTERVAL, log_interval=1, eval_interval=STEPS, eval_batches=pick(10, 2), device="cpu",
                         num_workers=0, tensorboard=False, seed=1337)

print(" ".join(sft_cmd("runs/4.1.7/sft")[1:]))
t0 = time.perf_counter()
with watch_steps(base / "sft", KILL_AFTER, "SFT until SIGKILL"):
    k = run_and_kill(sft_cmd(base / "sft"), base / "sft", kill_after_step=KILL_AFTER)
print(f"exit code {k.returncode} (-9 = SIGKILL) after step {k.last_logged_step}; complete checkpoints: "
      f"{[s for s, _ in CheckpointManager(base / 'sft', verbose=False).list_complete()]}")
with watch_steps(base / "sft", STEPS, "same command again"):
    r = run(sft_cmd(base / "sft"), base / "sft")
assert r.returncode == 0, r.tail(20)
print("\n".join(line for line in r.output.splitlines() if "resumed" in line or "done" in line))
with watch_steps(base / "sft_uninterrupted", STEPS, "uninterrupted SFT"):
    r2 = run(sft_cmd(base / "sft_uninterrupted"), base / "sft_uninterrupted")
assert r2.returncode == 0, r2.tail(20)
a = CheckpointManager(base / "sft", verbose=False).load(CheckpointManager(base / "sft").path_for(STEPS))
b = CheckpointManager(base / "sft_uninterrupted", verbose=False).load(
    CheckpointManager(base / "sft_uninterrupted").path_for(STEPS))
same = all(torch.equal(a["model"][n], b["model"][n]) for n in b["model"])
same_opt = all(torch.equal(u, v) for i in b["optimizer"]["state"] for u, v in
               zip(a["optimizer"]["state"][i].values(), b["optimizer"]["state"][i].values(), strict=True))
print(f"three processes took {time.perf_counter() - t0:.0f} s; killed + resumed == uninterrupted, bitwise: "
      f"model {same}, optimizer {same_opt}")
assert same and same_opt

# %% [markdown]
# 与 4.0.1 一样：被杀的进程重做了从最新完整检查点到被杀那一步之间的几步，最终的每个权重和优化器状态与不中断的训练逐位相同。
# `tests/reliability/test_sft_kill.py` 在随机的训练步中间和保存过程中间杀掉 SFT 进程（BPE 分词器、打包、`--init`），
# 每次都要求逐位相同。
#
# ## 5. 导出、启动服务、用 openai 客户端聊天
#
# 导出得到推理产物（`model.safetensors` + `config.json`，BPE 模型还有 `tokenizer.json`），服务 `course_lib.serve`
# 的 `POST /v1/chat/completions` 把 `messages` 套上同一个聊天模板，生成到 `<|im_end|>` 为止。终端里：
#
# ```bash
# python -m course_lib.export runs/4.1.7/sft runs/4.1.7/sft_export
# python -m course_lib.serve --model runs/4.1.7/sft_export
# ```
#
# 这里和 4.2.5 一样把服务放进后台线程，端口由操作系统挑选。问的是一条**留出**的指令：它的函数在 SFT 里两个方向都没出现过。

# %%
import openai

from course_lib.engine import Engine
from course_lib.export import export_from_run, load_inference
from course_lib.serve import ServerThread, create_app

info = export_from_run(base / "sft", base / "sft_export")
chat_model, chat_tok, _ = load_inference(base / "sft_export")
print(f"exported step {info['step']} -> sft_export/ ({', '.join(sorted(f.name for f in (base / 'sft_export').iterdir()))})")
def room(text):  # how many tokens the 256-token context leaves for the answer
    return chat_model.config.max_seq_len - len(chat_tok.encode(render_chat([{"role": "user", "content": text}])))

held = min((r for r in split.heldout if r["kind"] == "code2doc"), key=lambda r: len(r["messages"][0]["content"]))
question = held["messages"][0]["content"]
SETTINGS = dict(temperature=0.0, max_tokens=min(pick(100, 24), room(question)), seed=0)
with ServerThread(create_app(Engine(chat_model, eos_id=chat_tok.eos_id, max_batch=4), chat_tok, "sft-4.1.7")) as srv:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed")
    r = client.chat.completions.create(model="sft-4.1.7", messages=[{"role": "user", "content": question}], **SETTINGS)
    print(f"sampling: {SETTINGS} (temperature 0 = greedy); held-out function {held['source']}")
    print("[user]\n" + question)
    print("[assistant: the SFT'd model]\n" + r.choices[0].message.content)
    print("[reference answer]\n" + held["messages"][1]["content"])
    print("finish_reason:", r.choices[0].finish_reason, "| usage:", r.usage.prompt_tokens, "prompt +",
          r.usage.completion_tokens, "completion tokens")
    other = [x for x in split.heldout if x["kind"] == "doc2code"][0]["messages"][0]["content"]
    print("\nstreamed:", other)
    for chunk in client.chat.completions.create(model="sft-4.1.7", messages=[{"role": "user", "content": other}],
                                                stream=True, **{**SETTINGS, "max_tokens": min(pick(100, 24), room(other))}):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="|", flush=True)
    print()

# %% [markdown]
# `|` 标出了每个流式事件 (server-sent event) 的边界；字节模型一个事件是一个字节（或凑齐一个完整 UTF-8 字符的几个字节）。
# 把模型的回答和参考答案对照着读：这里只训练了第 4 节那几十步（耗时打印在第 4 节）。课程自带的聊天模型
# `course_lib/assets/chat_model` 是同样的命令跑 150 步、每步 16 行得到的（见它的 `TRAINING.json`，
# 留出指令上的回答在 `DEMO.txt`）。`tests/unit/test_serve_api.py` 用真实的 `openai` 客户端检查这个接口（普通、流式、
# 不支持的字段得到点名字段的 400）。
#
# ## 小结
#
# - 字节级 BPE：从 256 个字节出发合并常见的相邻对；几秒钟就能在自己的语料上训练，token 数少得多，也没有未知字符。
# - 不同分词器的模型只能按每字节比特数比较；同样的训练时间，哪个更好取决于模型多大、词表多大，上面是本机的实测。
# - SFT = 聊天模板 + 只在助手 token 上的 loss（其余标签 -100）+ 打包（document_ids 让对话互不可见，位置从 0 重新数）；
#   它用的是同一个 Trainer，所以 kill 之后的恢复同样逐位相同；导出的产物直接给 OpenAI 兼容的服务用。
#
# ## 练习
#
# 打开 `exercises/ex417_sft_collator.py`，写 `collate_packed`：给定分词后的对话和它们的助手掩码，返回打包后的
# `input_ids`、`labels`（助手之外是 -100）、`position_ids`（每个文档从 0 开始）和 `document_ids`。
# 评分器拿 `course_lib.sft` 的实现逐元素对照，再把你的张量喂进真实的 `DIYModel`：每条对话的 loss 和梯度必须与单独一行时相同。

# %%
from course_lib.lab.grading import check

result = check("4.1.7")

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.1.7")

# %% [markdown]
# ## 下一步
#
# - 在你自己的中文语料上训练 BPE（`python -m course_lib.tokenizer --data 你的文件夹 --vocab-size 8000 --out tokenizer.json`），
#   用 `tokens_per_char` 测中文每字符的 token 数，与本课的表对比。
# - 用 `--tokenizer tokenizer.json` 从头预训练一个 BPE 模型，再 `--task sft --init 它的目录`：导出的产物里会带着 `tokenizer.json`。
# - 把你阶段三的 SFT 数据写成 JSONL（`messages` 或 `prompt`/`response`），用同一条命令微调，再 kill 一次试试。
