"""练习 ex412：DDP 初始化 (setup)：从 torchrun 的环境变量建立进程组、采样器、包装模型。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.2")` 检查你的实现；
卡住时 `from course_lib.lab.hints import hint; hint("ex412_ddp_setup")`，每调用一次多给一层提示。

评分测试会真的启动 2 个进程（gloo 后端，CPU）来运行你的函数。
"""

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def setup_ddp(
    model: torch.nn.Module, dataset: Dataset, batch_size: int, seed: int = 0
) -> tuple[DistributedDataParallel, DataLoader, DistributedSampler]:
    """在当前进程里完成 DDP 的准备，返回 `(ddp_model, loader, sampler)`。

    输入：`model`、map-style 的 `dataset`、每个 rank 的 `batch_size`、打乱用的 `seed`；
    环境变量 `RANK`、`WORLD_SIZE`、`MASTER_ADDR`、`MASTER_PORT`（由 torchrun 设置）。

    约定 (contract)：
    - 进程组 (process group) 用 CPU 上的 `gloo` 后端；已经初始化过就不要再初始化；
    - 返回的 `sampler` 是 `DistributedSampler`，`loader` 是用它取样本的 `DataLoader`（每批
      `batch_size` 个）：各 rank 拿到的样本互不重复；样本数不能整除时 **丢掉** 多余的，
      绝不用重复样本补齐；打乱顺序由 `seed` 决定；
    - 返回的模型是 `DistributedDataParallel`：backward 之后各 rank 的梯度已经是平均值，
      一步之后所有 rank 的参数相同；
    - 每个 epoch 开始时调用 `sampler.set_epoch(epoch)` 是调用方的事，不在这里做。

    例子：10 个样本、2 个进程、batch_size=1 → 每个 rank 5 个样本，两边没有交集；
    一步 SGD 之后两个 rank 的参数逐位相同。
    """
    raise NotImplementedError("请实现 setup_ddp")
