"""练习 ex401（热身）：保存与加载训练检查点 (checkpoint)，CS336 风格。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.0.1")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex401_checkpoint")`，每调用一次多给一层提示。

这是热身：只有模型和优化器。真正的恢复还要 scheduler、RNG、数据位置和配置，
那是 4.1.1 的综合练习 `exercises/ex411_train_script.py`：它会被真的杀掉再恢复。
"""

import os
from typing import IO, BinaryIO

import torch

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: PathOrFile) -> None:
    """把继续训练所需的状态（这里只有模型和优化器）写到 `out`。

    输入：`model`、`optimizer`、已完成的步数 `iteration`（int）、`out`（路径，或已打开的二进制文件对象）。

    约定 (contract)：
    - 写出的文件能被 `torch.load(out, weights_only=True)` 读回，读回的是一个 dict，
      至少有键 `"model"`、`"optimizer"`、`"iteration"`；
    - 只放张量 (tensor) 和普通容器（dict/list/int/float/str）。

    例子：训练 5 步后 `save_checkpoint(model, opt, 5, "ckpt.pt")`；`load_checkpoint("ckpt.pt", m2, o2)`
    返回 5，之后再训练 5 步，m2 的参数与一口气训练 10 步的逐位相同。
    """
    raise NotImplementedError("请实现 save_checkpoint")


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """从 `src` 恢复 `model` 和 `optimizer`（原地修改它们），返回保存时的 `iteration`。

    约定 (contract)：
    - 读取必须拒绝藏有 pickle 代码的文件，绝不执行它（不可信的文件可能来自网上）；
    - 恢复之后继续训练，结果应与从未中断的训练逐位相同 (bitwise-identical)；
    - `src` 可以是路径，也可以是已打开的二进制文件对象。
    """
    raise NotImplementedError("请实现 load_checkpoint")
