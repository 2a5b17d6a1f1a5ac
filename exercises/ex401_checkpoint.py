"""练习 ex401：保存与加载训练检查点 (checkpoint)，CS336 风格。

在 notebook 里运行 `from course_lib.grading import check; check("4.0.1")` 检查你的实现。
完整版本见 `course_lib/checkpoint.py`（原子写入、校验和、保留最近 K 个）。
"""
import os
from typing import IO, BinaryIO

import torch

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    out: PathOrFile) -> None:
    """把继续训练所需的状态写到 `out`（路径或已打开的二进制文件对象）。

    约定 (contract)：
    - 保存一个 dict，至少包含 `model.state_dict()`、`optimizer.state_dict()` 和 `iteration`（int）；
    - 用 `torch.save` 写入；只放张量 (tensor) 和普通容器（dict/list/int/float/str），
      这样加载时才能用 `weights_only=True`。
    """
    raise NotImplementedError("请实现 save_checkpoint")


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """从 `src` 恢复 `model` 和 `optimizer` 的状态（原地修改它们），返回保存时的 `iteration`。

    约定 (contract)：
    - 必须用 `torch.load(src, map_location="cpu", weights_only=True)`：
      不可信的文件里可能藏着 pickle 代码，`weights_only=True` 会拒绝它，绝不执行；
    - 恢复之后继续训练，结果应与从未中断的训练逐位相同 (bitwise-identical)。
    """
    raise NotImplementedError("请实现 load_checkpoint")
