"""练习 ex411（综合）：自己写一个可以被随时杀掉、再启动就能接着训练的完整训练脚本。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.1")` 检查；卡住时
`from course_lib.lab.hints import hint; hint("ex411_train_script")`，每调用一次多给一层提示。
自己运行：

    python exercises/ex411_train_script.py --out-dir runs/my_script --max-steps 40

评分器 (grader) 怎么检查：先不中断地跑一遍（参照），再用同一条命令反复启动同一个输出目录：
第 1 次在第 6 次 optimizer.step() 之后 SIGKILL；第 2 次在它往 checkpoints/ 里写第一个文件写到
一半时 SIGKILL（不管用什么写：torch.save、Path.write_bytes、shutil.copyfile、open().write，
文件都只留一半）；第 3 次在它写第二个文件写到一半时 SIGKILL；第 4 次在它把写好的文件换名到位
(os.replace / os.rename) 之前 SIGKILL；第 5 次跑到结束。最终权重必须与参照逐位相同
(bitwise-identical)，被杀又重启之后的 metrics.jsonl 也必须有每一个该记的步；不同的话，评分器
会说出是哪一项状态没有恢复。
"""

import argparse
import math
import random
import sys
from pathlib import Path

import torch

# ---------------------------------------------------------------- 已经写好的部分（不用改）
# Find the repository's course_lib when the file is run as `python exercises/ex411_...py`.
for _parent in Path(__file__).resolve().parents:
    if (_parent / "course_lib").is_dir():
        sys.path.insert(0, str(_parent))
        break

from safetensors.torch import save_file

from course_lib.config import ModelConfig
from course_lib.data import build_datasets
from course_lib.model import DIYModel


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="可恢复的训练脚本 (resumable training script)")
    ap.add_argument("--out-dir", required=True, help="输出目录：checkpoints/、metrics.jsonl、final_model.safetensors")
    ap.add_argument("--max-steps", type=int, default=12, help="优化器步 (optimizer step) 总数")
    ap.add_argument("--save-every", type=int, default=4, help="每完成多少步保存一次 checkpoint")
    ap.add_argument("--log-every", type=int, default=2, help="每多少步写一行日志")
    ap.add_argument("--warmup-steps", type=int, default=3, help="线性预热的步数")
    ap.add_argument("--lr", type=float, default=3e-3, help="预热结束时的峰值学习率")
    ap.add_argument("--grad-clip", type=float, default=0.5, help="梯度裁剪的最大全局范数")
    ap.add_argument("--seed", type=int, default=0, help="随机种子")
    return ap.parse_args(argv)


def build(args):
    """Model and data from course_lib: a tiny model with dropout, so the RNG matters."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = ModelConfig(
        d_model=32,
        n_layers=1,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=64,
        max_seq_len=32,
        dropout=0.1,
        tie_embeddings=False,
    )
    model = DIYModel(cfg)
    dataset, _, _ = build_datasets("stdlib", seq_len=32, batch_size=4, seed=args.seed, max_bytes=50_000)
    return model, dataset


def lr_factor(step, warmup_steps, max_steps):
    """学习率倍数 (LambdaLR 的 lr_lambda)：第 step 个优化器步 (从 0 数) 用 lr * lr_factor(step)。"""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_final_weights(model, out_dir):
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        str(Path(out_dir) / "final_model.safetensors"),
    )


# ---------------------------------------------------------------- 你的部分
def main(argv=None):
    """完整的可恢复训练循环 (resumable training loop)。

    输入：命令行参数（`parse_args(argv)` 已写好）；模型和数据用已写好的 `build(args)` 得到
    （`dataset` 是一个无限产生 `(x, y)` batch 的 IterableDataset，有 `state_dict(batches_used)`
    和 `load_state_dict(state)` 两个方法记录/恢复数据位置）。

    输出（都在 `args.out_dir` 下）：
    - `checkpoints/`：每完成 `save_every` 步保存一次，内容是一个 dict，顶层键至少有
      `model`、`optimizer`、`scheduler`、`step`（已完成的步数）、`rng`（随机数状态）、
      `data`（数据位置）、`config`（本次的参数，如 `vars(args)`），能用
      `torch.load(..., weights_only=True)` 读回；
    - `metrics.jsonl`：第 0、log_every、2*log_every… 步各写一行 JSON，含 `step`、`loss`、
      `lr`（这一步实际用的学习率）、`grad_norm`（裁剪前的全局范数）；被杀再启动后，之前
      几次运行写下的行要留着（恢复后重做的步可以再写一遍）；
    - 跑完 `max_steps` 步后调用 `save_final_weights(model, out_dir)`。

    约定 (contract)：
    - 优化器 AdamW(lr=args.lr, weight_decay=0.1)；每步一个 batch，恰好一次 `optimizer.step()`；
    - 第 s 步（从 0 数）的学习率 = `args.lr * lr_factor(s, warmup_steps, max_steps)`；
    - 每步在 backward 之后、step 之前把全局梯度范数裁剪到 `args.grad_clip`；
    - 启动时如果 `checkpoints/` 里有完整的 checkpoint，从步数最大的那个继续；任何时刻被
      SIGKILL（包括保存到一半）后，再次运行同一条命令，最终权重都与不中断的运行逐位相同；
    - 写了一半的文件绝不能被当成 checkpoint 读到。

    例子：`--max-steps 12 --save-every 4`，在第 6 步后被杀 → 再启动时从第 4 步的
    checkpoint 继续（重做第 4、5 步，结果与第一次完全一样），跑完 12 步后写 final_model.safetensors。
    """
    raise NotImplementedError("请实现 main：可恢复的训练循环")


if __name__ == "__main__":
    main()
