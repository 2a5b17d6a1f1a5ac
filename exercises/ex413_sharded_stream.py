"""练习 ex413：按 rank × worker 切分、可以从中间恢复的流式数据集 (sharded streaming IterableDataset)。

在 notebook 里运行 `from course_lib.lab.grading import check; check("4.1.3")` 检查；卡住时
`from course_lib.lab.hints import hint; hint("ex413_sharded_stream")`，每调用一次多给一层提示。
"""

import torch  # noqa: F401  (you will probably need it)
from torch.utils.data import IterableDataset


class ShardedStream(IterableDataset):
    """产生样本编号 (sample id, int) 的流式数据集，一个 epoch 一轮。

    构造：`ShardedStream(num_samples, rank=0, world_size=1, seed=0)`；num_samples < 1 或
    rank 不在 [0, world_size) 时抛出 `ValueError`。

    约定 (contract)：
    - 每个 epoch 的顺序是 0..num_samples-1 的一个随机排列，只由 (seed, epoch) 决定：同一个 epoch
      每次都一样，不同 epoch 不一样；`set_epoch(e)` 切换到第 e 个 epoch（从头开始）。
    - 切分：world_size 个 rank 合起来，每个样本在一个 epoch 里 **恰好出现一次**（不丢、不重复，
      各 rank 的数量最多差 1）。在每个 rank 上，用 `DataLoader(ds, batch_size=None, num_workers=W)`
      读取时也必须如此：W 个 worker 进程各拿到一份同样的 `ds` 副本，不能重复产生同一个样本。
    - 在同一个 rank 上，训练循环通过 DataLoader 看到的顺序与 W 无关（W = 0、1、2 都一样），
      这样保存的位置才有意义。DataLoader 按 worker 0, 1, …, W-1, 0, 1, … 轮流取数据。
    - 恢复：`state_dict(consumed)` 返回一个只含 int 的 dict，记录当前 epoch 和这个 rank 已经用掉的
      样本数 `consumed`；新建一个同样参数的数据集后 `load_state_dict(state)`，再迭代（任意 W）
      得到的正是这个 epoch 里剩下的样本，顺序不变。

    例子：num_samples=10, world_size=2。rank 0 这个 epoch 可能是 [7, 2, 9, 0, 4]，rank 1 是
    [3, 8, 1, 6, 5]（合起来恰好 0..9 各一次）；rank 0 用掉 2 个后保存 state_dict(2)，恢复后
    迭代得到 [9, 0, 4]。
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        raise NotImplementedError("请实现 ShardedStream.__init__")

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError("请实现 set_epoch")

    def __iter__(self):
        raise NotImplementedError("请实现 __iter__")

    def state_dict(self, consumed: int) -> dict:
        raise NotImplementedError("请实现 state_dict")

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError("请实现 load_state_dict")
