"""参考答案 ex401：保存与加载训练检查点。"""

import os
from typing import IO, BinaryIO

import torch

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: PathOrFile) -> None:
    # Only tensors and plain containers: loadable with weights_only=True.
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": int(iteration)}, out)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    # weights_only=True: a file that needs full pickle (and could run code) is refused.
    state = torch.load(src, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["iteration"])
