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
# # 4.0.4 · 日志与监控 (logging and monitoring)
#
# **学习目标**：每 N 步记录 loss、lr、梯度范数、tokens/s、已用时间和 ETA，写到控制台（notebook 里是 tqdm 进度条）、JSONL 文件和 TensorBoard；
# 用 matplotlib 从 JSONL 画图，用 TensorBoard 在 JupyterLab 里看同一次运行；NaN/Inf 出现的那一步就停下，并说明可能原因。
#
# **前置知识**：4.0.1–4.0.3。 **预计时间**：运行{{run_time}}，阅读 + 练习约 25 分钟。

# %%
# 先选定 torch 的 CPU 线程数：机器忙时少开线程，避免互相抢占（见 00-setup）。
from course_lib.lab.threads import setup_threads

setup_threads();

# %%
import os

import torch

from course_lib.checkpoint import CheckpointManager
from course_lib.config import ModelConfig, TrainConfig, pick, quick_mode
from course_lib.monitor import NonFiniteError, ProgressBar, read_jsonl
from course_lib.lab.paths import runs_dir
from course_lib.lab.plotting import new_axes
from course_lib.train import Callback, Trainer

out = runs_dir("4.0.4/run", fresh=True)
cfg = TrainConfig.default(max_steps=pick(200, 30), out_dir=str(out), tensorboard=True, ckpt_interval=0, log_interval=pick(5, 2))
trainer = Trainer(ModelConfig.small(), cfg, callbacks=[ProgressBar()], console=False, save_checkpoints=False)
history = trainer.fit()

# %% [markdown]
# ## 1. JSONL：画图的依据
# 每条记录一行 JSON（`course_lib.monitor.StepLogger`）。它是纯文本、只追加 (append-only)，每行写完就 `flush()`：
# 进程被 SIGKILL 时，已经 flush 的行都还在，最多丢最后一行写了一半的（`read_jsonl` 会跳过它）；断电时没有 fsync 的行可能丢
# （SIGKILL 与断电的区别见 4.0.1 第 1 节）。日志丢几行可以接受，检查点才需要 fsync，所以这里不为每行付 fsync 的代价。

# %%
recs = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
print(sorted(recs[-1]))
fig, axes = new_axes("One run, four signals (from metrics.jsonl)", "optimizer step", "", ncols=4, figsize=(14, 3.4))
for ax, key, ylabel in zip(axes, ("loss", "lr", "grad_norm", "tokens_per_s"),
                           ("loss (nats/token)", "learning rate", "grad-norm", "tokens / s"), strict=True):
    ax.plot([r["step"] for r in recs], [r[key] for r in recs]); ax.set_ylabel(ylabel); ax.set_title(key)
print(f"last record: elapsed {recs[-1]['elapsed_s']:.1f}s, eta {recs[-1]['eta_s']:.1f}s")

# %% [markdown]
# ## 2. TensorBoard
# 同样的标量写在 `out/tb`。在 JupyterLab 里运行下面的单元格会嵌入 TensorBoard 面板（它会启动一个服务进程，所以默认不启动：
# 设置环境变量 `COURSE_TENSORBOARD=1` 或把 `SHOW_TB` 改成 `True`）。终端里：`tensorboard --logdir runs/4.0.4`。
# 不管面板启动与否，我们都用 TensorBoard 自己的读取器 (EventAccumulator) 读回事件文件，证明数据在里面：

# %%
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(str(out / "tb")); acc.Reload()
print("scalar tags:", acc.Tags()["scalars"])
print("train/loss points:", len(acc.Scalars("train/loss")))

# %%
SHOW_TB = os.environ.get("COURSE_TENSORBOARD") == "1" and not quick_mode()
if SHOW_TB:
    get_ipython().run_line_magic("load_ext", "tensorboard")
    get_ipython().run_line_magic("tensorboard", f"--logdir {out / 'tb'}")
else:
    print("TensorBoard panel not started (set COURSE_TENSORBOARD=1 to embed it here)")

# %% [markdown]
# ## 3. 选一个追踪工具 (experiment tracker)：TensorBoard、wandb 还是 SwanLab
# 三者记录的是同一组数字（`train/loss`、`train/lr`、`train/grad_norm`、`train/tokens_per_s`，横轴是训练步），区别在数据放在哪里、谁能看到：
#
# | | TensorBoard | wandb (Weights & Biases) | SwanLab |
# |---|---|---|---|
# | 数据在哪 | 本地事件文件 `out/tb` | 离线 (`offline`) 时在 `out/wandb`，`wandb sync` 后在 wandb 的云端 | 离线时在 `out/swanlog`，`swanlab sync` 后在 SwanLab 云端；`local` 模式本地查看 |
# | 账号 / 网络 | 都不需要 | 上传和网页面板需要 | 上传和网页面板需要（国内访问顺畅，minimind 也用它） |
# | 适合 | 单机、离线、课程默认 | 多人协作、比较很多次实验、论文和开源项目里最常见 | 国内团队，中文界面 |
#
# 怎么选：只有自己一台机器、不想注册账号就用 TensorBoard（一直开着）；要和别人分享曲线、比较很多次实验，选 wandb 或 SwanLab 之一，
# 看你的团队已经在用哪个。两者在课程里都是 `Callback`（`course_lib/trackers.py`），命令行加 `--tracker wandb` 或 `--tracker swanlab`，
# 默认离线模式，不需要账号。**恢复的训练继续同一个追踪 run**：run id 存在 `out_dir/trackers.json`，从 checkpoint 恢复时沿用（这里不演示；`tests/unit/test_trackers.py` 对两种工具各检查一次）。
# 下面用离线模式把一次短训练同时发给已安装的追踪工具（它们在可选的 `.[trackers]` 里；没装的会跳过并说明）：

# %%
import importlib.util

from IPython.utils.capture import capture_output

from course_lib.trackers import make_tracker, read_run_ids

installed = [n for n in ("wandb", "swanlab") if importlib.util.find_spec(n) is not None]
print("installed trackers:", installed or "none (pip install -e '.[trackers]')")
if installed:
    os.environ.setdefault("WANDB_SILENT", "true")
    tr_dir = runs_dir("4.0.4/trackers", fresh=True)
    cfg3 = TrainConfig.default(max_steps=pick(20, 6), warmup_steps=2, out_dir=str(tr_dir), tensorboard=False, ckpt_interval=0,
                               log_interval=2)
    trackers = [make_tracker(n, mode="offline") for n in installed]
    # the trackers' own banners (paths on this machine, sync hints) are kept out of the page
    with capture_output():
        Trainer(ModelConfig.small(), cfg3, callbacks=trackers, console=False, save_checkpoints=False).fit()
    for name, run_id in read_run_ids(tr_dir).items():
        folder = {"wandb": "wandb", "swanlab": "swanlog"}[name]
        parts = sorted(p.name for p in (tr_dir / folder).iterdir() if p.is_dir() and p.name.endswith(run_id))
        print(f"{name}: run id {run_id}, offline run folder(s) {parts}; upload later with `{name} sync`")

# %% [markdown]
# ## 4. NaN 守卫 (NaN guard)
# 一个回调在第 `AT` 步把一个梯度改成 NaN（模拟 fp16 溢出或坏数据），NaN 守卫 (NaN guard) 检查每一步的梯度。
#
# **先预测**（点选后按「记下预测」，或 `p.guess("B")`）：

# %%
from course_lib.lab.quiz import predict

p = predict("4.0.4", "stopped_minus_at")

# %%
AT = pick(25, 7)
class PoisonGrad(Callback):
    def on_after_backward(self, trainer):
        if trainer.step + 1 == AT:
            next(trainer.model.parameters()).grad.view(-1)[0] = float("nan")

nan_dir = runs_dir("4.0.4/nan", fresh=True)
cfg2 = TrainConfig.default(max_steps=AT + 10, warmup_steps=2, out_dir=str(nan_dir), tensorboard=False, ckpt_interval=5)
t2 = Trainer(ModelConfig.small(), cfg2, callbacks=[PoisonGrad()], console=False)
try:
    t2.fit()
except NonFiniteError as e:
    print("stopped:", e)
mgr = CheckpointManager(nan_dir, verbose=False)
finite = all(torch.isfinite(t).all() for _, f in mgr.list_complete() for t in mgr.load(f)["model"].values())
print(f"last finished step {t2.step}; checkpoints {[s for s, _ in mgr.list_complete()]}; all finite: {finite}")

# %%
p.reveal(t2.step - AT)

# %% [markdown]
# 训练在注入 NaN 的**那一步**停下，报告步数和可能原因：守卫在 `optimizer.step()` 之前检查梯度，这一步的更新没有执行，
# 所以最后完成的是它的前一步，磁盘上的检查点全部是有限值（上面打印的 `all finite`）。

# %% [markdown]
# ## 小结
# - 一个 `StepLogger`，三个去处：控制台/tqdm（给人看）、JSONL（给画图和脚本）、TensorBoard（交互浏览）。
# - tokens/s 与 ETA 告诉你"还要多久"，梯度范数告诉你"健不健康"，NaN 守卫保证坏的一步不会写进检查点。
#
# ## 练习
# 实现 `exercises/ex404_nan_guard.py` 的 `guard_step`：

# %%
from course_lib.lab.grading import check
check("4.0.4");

# %% [markdown]
# ## 自检

# %%
from course_lib.lab.quiz import quiz

q = quiz("4.0.4")   # 预测题在第 4 节的实验之前已经问过

# %% [markdown]
# ## 下一步
#
# - 用 `COURSE_TENSORBOARD=1` 打开上面的 TensorBoard 面板，在同一个 logdir 下放两次不同学习率的运行，对比曲线。
# - 故意把学习率调到 1e4，看 NaN 守卫在第几步停下、报了哪些可能原因。
# - 下一课 4.0.5：开训之前，先估算内存够不够。
