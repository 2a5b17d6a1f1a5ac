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
# # 00 · 环境检查与课程导览 (Setup)
#
# 欢迎来到阶段四：**模型优化与工程化**。这门课的每一课都是一个 notebook，读起来像一次实验：
# 一个想法 → 调用 `course_lib` 里的实现 → 测量或画图 → 一个练习 (exercise) → 自检 (self-check)。
#
# 这个 notebook 做三件事：
# 1. 检查环境：每个依赖包 (package) 和每项运行能力 (capability) 打印 `[OK]` / `[FAIL]`；
# 2. 给出课程地图 (course map)：哪个 notebook 对应学习计划的哪一项、有哪些练习；
# 3. 演示练习和自检怎么用。
#
# 整个 notebook 在 CPU 上运行{{run_time}}。最慢的是最后的 `progress()`：它把所有练习的评分测试各跑一遍（用时在它下面打印）。
#
# **你的工作副本 (working copies)**：`make lab` 打开的是 `my-notebooks/` 里的 notebook——第一次运行时从 `notebooks/`
# 复制过来，git 不跟踪它们，你可以随意运行、修改、保存。`notebooks/` 里保存的是课程的参考版本（完整运行的输出），
# 不会被覆盖。课程更新了 notebook 时运行 `make refresh-notebooks`：缺的副本补上，你改过的副本另存为 `*.bak.ipynb` 再换成新版。
# 你的练习进度用 `make progress` 或 notebook 里的 `check()` / `progress()` 查看；`make test` 检查的是课程本身，
# 做练习、跑 notebook 都不会让它变红。

# %% [markdown]
# ## 1. 环境检查 (environment check)
#
# `[OK]` 表示可用，`[FAIL]` 表示需要修复（通常重新运行 `make install` 即可），
# `[SKIP]` 是可选的包，`[INFO]` 只是告诉你当前状态。
#
# - **CUDA**：没有 GPU 也没关系，整门课都能在 CPU 上跑；有 GPU 时这里会显示显卡型号。
# - **gloo**：PyTorch 在 CPU 上做分布式训练 (DDP) 用的通信后端 (backend)，4.1.2 会用到；有 GPU 时还会检查 **nccl**。
# - **bf16 autocast**：在 CPU 上真的用 bfloat16 跑一次小矩阵乘法，4.1.5 混合精度会用到。
# - **quick mode**：环境变量 `COURSE_QUICK=1` 时，所有实验自动缩小规模（测试和 nbval 用它），代码路径不变。
# - **CPU threads**：torch 默认每个核开一个线程。机器上还有别的程序在跑时，线程就要互相抢占 (oversubscription)：
#   核数是固定的，多开的线程只能轮流等（这里不测它有多慢；下面一行打印这台机器此刻的核数、负载和课程的选择）。
#   所以每一课的第一个单元格都调用 `setup_threads()`：按「可用核数 − 当前负载」选线程数，至少 1 个；
#   想自己指定就设环境变量 `COURSE_THREADS=N`。
# - **中文字体 (CJK font)**：Linux 上没有中文字体时，浏览器里的中文会显示成方框；这里会给出各发行版的安装命令。

# %%
from course_lib.lab.threads import setup_threads

threads = setup_threads()

# %%
from course_lib.lab.envcheck import run_checks

env_ok = run_checks()

# %% [markdown]
# ## 2. 课程地图 (course map)
#
# 课程地图的数据在 `course_lib/lab/course_map.py` 里（README 和 `progress()` 也用它；README 的表还列出了每一课对应的测试）。
# 标着「计划中」的 notebook 还没有写好。

# %%

from IPython.display import Markdown, display

from course_lib.lab.course_map import COURSE_MAP, markdown_table
from course_lib.lab.grading import find_root

ROOT = find_root()
display(Markdown(markdown_table(ROOT, with_tests=False)))

# %% [markdown]
# 学习顺序与学习计划一致：先 **4.0**（可恢复、稳定、可观测），再 **4.1**（训练优化），最后 **4.2**（部署与推理优化）。
# 下面这个单元格的输出是固定的，nbval 会逐字比较它（`# NBVAL_CHECK_OUTPUT`）。

# %%
# NBVAL_CHECK_OUTPUT
missing = [e["notebook"] for e in COURSE_MAP if not (ROOT / "notebooks" / e["notebook"]).exists()]
print("课程地图里的 notebook 都在 notebooks/ 里：", not missing, missing or "")

# %% [markdown]
# ## 3. 练习与自检怎么用 (exercises and self-checks)
#
# 仓库里有三个相互对应的目录：
#
# | 目录 | 内容 |
# |---|---|
# | `exercises/exNNN_name.py` | **你要改的文件**：函数签名、中文说明（任务和约定）、`raise NotImplementedError` |
# | `solutions/exNNN_name.py` | 参考答案（先自己做，卡住了再看） |
# | `tests/exercises/test_exNNN_name.py` | 评分测试 (grader)：和可信的参照 (oracle) 比较，比如 PyTorch 自带的实现 |
#
# 练习编号跟着课程编号走：`4.0.1` 的练习是 `exercises/ex401_*.py`，这一课的热身练习是 `ex00_rmsnorm`。
#
# 做法：
# 1. 在 JupyterLab 左侧打开 `exercises/ex00_rmsnorm.py`，读 docstring，把 `raise NotImplementedError` 换成你的实现，保存；
# 2. 回到 notebook 运行 `check("00")`（也可以写 `check("ex00_rmsnorm")`，或课程编号如 `check("4.0.1")`）；
# 3. 看表格：**通过** / **未通过**（附上期望值和实际值）/ **未实现**（还是 `NotImplementedError`）。
#
# `check` 每次都在一个新的 Python 子进程里运行评分测试，所以它总会重新读取你的文件：改完直接再运行，**不需要重启 kernel**。
# 终端里也可以用：`python -m course_lib.lab.grading 00`；不带参数的 `python -m course_lib.lab.grading` 显示全部练习的进度。

# %%
print((ROOT / "exercises" / "ex00_rmsnorm.py").read_text(encoding="utf-8"))

# %% [markdown]
# 下面对**还没改过**的练习文件运行自检，你会看到每个测试都是「未实现」。实现之后再运行这个单元格，它们应该全部变成「通过」。

# %%
from course_lib.lab.grading import check, progress

result = check("00")

# %%
print(result.summary(), "| 全部通过:", result.passed)

# %% [markdown]
# `progress()` 一次检查所有练习，并按练习汇总：全部通过 / 部分通过 / 未开始。它为每个练习各跑一遍评分测试
# （上面的 `check("00")` 只跑一个练习），用时打印在它下面；只想看一课时用 `check("4.0.1")`。

# %%
import time

t0 = time.perf_counter()
_ = progress()
print(f"progress() took {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## 下一步
#
# 环境都是 `[OK]` 的话，就可以打开 `4.0.1-checkpoint-resume.ipynb` 开始第一课了。
# 遇到 `[FAIL]`：在仓库根目录运行 `make install`（或按 README 的 conda 路线）后，重启 kernel 再运行本 notebook。
