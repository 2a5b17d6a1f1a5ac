"""练习 ex413：按 rank × worker 切分、可以从中间恢复的流式数据集——参考答案。"""

import torch
from torch.utils.data import IterableDataset, get_worker_info


class ShardedStream(IterableDataset):
    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}: need at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.num_samples, self.rank, self.world_size, self.seed = num_samples, rank, world_size, seed
        self.epoch = 0
        self.start = 0  # samples of this rank's epoch already used (resume point)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def rank_order(self) -> list[int]:
        """This rank's samples for the current epoch, in the order the loop must see them."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        return perm[self.rank :: self.world_size]

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader reads its workers round-robin: worker w takes items w, w+nw, ... of
        # what is left, so the loop sees them in order whatever the number of workers.
        yield from self.rank_order()[self.start :][wid::nw]

    def state_dict(self, consumed: int) -> dict:
        return {
            "epoch": self.epoch,
            "consumed": int(consumed),
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "rank", "world_size", "num_samples"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"saved position has {key}={state.get(key)!r}, this dataset has "
                    f"{getattr(self, key)!r}: resume with the same settings"
                )
        self.epoch, self.start = int(state["epoch"]), int(state["consumed"])
