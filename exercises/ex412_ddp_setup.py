"""练习 ex412：DDP 初始化 (setup)：从 torchrun 的环境变量建立进程组、采样器、包装模型。

在 notebook 里运行 `from course_lib.grading import check; check("4.1.2")` 检查你的实现。
评分测试会真的启动 2 个进程（gloo 后端，CPU）来运行你的函数。
完整版本见 `course_lib/distributed.py` 的 `setup()` 和 `course_lib/dataloading.py`。
"""

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def setup_ddp(model: torch.nn.Module, dataset: Dataset, batch_size: int,
              seed: int = 0) -> tuple[DistributedDataParallel, DataLoader, DistributedSampler]:
    """在当前进程里完成 DDP 的三件事，返回 `(ddp_model, loader, sampler)`。

    约定 (contract)：
    1. 进程组 (process group)：从环境变量 `RANK`、`WORLD_SIZE`（以及 `MASTER_ADDR`、
       `MASTER_PORT`，由 torchrun 设置）读出 rank 和 world size，用 `gloo` 后端 (backend)
       调用 `torch.distributed.init_process_group`（如果已经初始化过就不要再初始化）。
    2. 采样器 (sampler)：`DistributedSampler(dataset, num_replicas=world_size, rank=rank,
       shuffle=True, seed=seed, drop_last=True)`：每个 rank 拿到不同的样本、互不重复。
       DataLoader 用这个 sampler，`batch_size=batch_size`，`drop_last=True`（有了 sampler
       就不能再传 `shuffle=True`）。
    3. 模型包装 (wrap)：`DistributedDataParallel(model)`（CPU 上不传 device_ids）。
       反向传播 (backward) 时 DDP 会对各 rank 的梯度做 all-reduce 求平均。
    训练循环里每个 epoch 开始时要调用 `sampler.set_epoch(epoch)`（调用方负责，不在这里做）。
    """
    raise NotImplementedError("请实现 setup_ddp")
