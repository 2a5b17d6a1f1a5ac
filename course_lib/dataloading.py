"""The input pipeline under DDP: map-style data with DistributedSampler, and how fast it is.

Two ways to feed N processes, both in the Trainer (``TrainConfig.loader``):

* ``"stream"`` (default): ``data.StreamingTokenDataset``, an ``IterableDataset`` that shards
  the sample order by rank *and* by DataLoader worker itself and yields whole batches.
* ``"map"``: ``TokenChunkDataset`` (map-style, ``ds[i]``) + ``DistributedSampler``: the sampler
  gives rank ``r`` every ``world_size``-th index of a permutation that depends on
  ``seed + epoch``; ``set_epoch(e)`` must be called at the start of every epoch, or every
  epoch repeats the epoch-0 order. DataLoader workers then split *batches* of those indices
  among themselves (the main process sends index batches to the workers in turn), so no
  sample is read twice. ``drop_last=True`` on the sampler: without it DistributedSampler
  *pads* the last round by repeating samples so every rank gets the same count.

``DistributedChunkBatches`` wraps the map-style path with the same position protocol as the
streaming dataset (``state_dict(batches_consumed)`` / ``load_state_dict`` / ``epoch_of``), so a
run resumes mid-epoch on either path.

``measure_throughput`` times the pipeline alone (no model) in samples/s for a DataLoader
setting; ``bench/data_loading.py`` and notebook 4.1.3 compare settings against
``num_workers=0`` measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .data import DataError, DataPosition, PositionMixin, StreamingTokenDataset, TokenChunkDataset


class SkipSampler(Sampler):
    """The indices of ``sampler`` after the first ``skip`` (resume in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, idx in enumerate(self.sampler):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class DistributedChunkBatches(PositionMixin):
    """Map-style training data for one rank: ``TokenChunkDataset`` + ``DistributedSampler``.

    ``iterate()`` yields ``(x, y)`` batches forever, epoch after epoch, calling
    ``sampler.set_epoch(epoch)`` before each epoch and building a fresh DataLoader for it.
    Position = batches consumed by this rank; resuming at batch ``j`` skips the first
    ``(j % batches_per_epoch) * batch_size`` indices of epoch ``j // batches_per_epoch``.
    """

    def __init__(
        self,
        tokens: Tensor,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fingerprint: str = "",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.dataset = TokenChunkDataset(tokens, seq_len)
        # drop_last=True: no padding with repeated samples (see the module docstring).
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.fingerprint = rank, world_size, fingerprint
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"not enough text for one batch: {len(self.dataset)} samples of seq_len={seq_len} give "
                f"{len(self.sampler)} per rank, fewer than batch_size={batch_size}; use more text, a smaller "
                "batch_size or a shorter seq_len"
            )
        self.position = DataPosition(
            seed, batch_size, seq_len, rank, world_size, fingerprint, "map", self.batches_per_epoch
        )

    @classmethod
    def like(cls, stream: StreamingTokenDataset) -> DistributedChunkBatches:
        """Same tokens, sizes, seed, rank and fingerprint as a streaming dataset."""
        return cls(
            stream.tokens,
            stream.seq_len,
            stream.batch_size,
            stream.seed,
            stream.rank,
            stream.world_size,
            stream.fingerprint,
        )

    def iterate(
        self,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        j = self.position.batches_consumed
        while True:
            epoch, b = divmod(j, self.batches_per_epoch)
            self.sampler.set_epoch(epoch)  # a new order every epoch, the same on every rank
            kw = dict(prefetch_factor=prefetch_factor) if num_workers > 0 and prefetch_factor else {}
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=SkipSampler(self.sampler, b * self.batch_size),
                drop_last=True,
                num_workers=num_workers,
                pin_memory=pin_memory,
                generator=generator,
                **kw,
            )
            for batch in loader:
                yield batch
                j += 1

    def batch_indices(self, j: int) -> Tensor:
        """Sample indices of this rank's global batch number ``j`` (for tests and demos)."""
        epoch, b = divmod(j, self.batches_per_epoch)
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        return torch.tensor(idx[b * self.batch_size : (b + 1) * self.batch_size])


# ------------------------------------------------------------------------------------------
# "The combined batch": what one process must see to match N DDP ranks
# ------------------------------------------------------------------------------------------
def combined_batch(
    tokens: Tensor, seq_len: int, batch_size: int, seed: int, world_size: int, j: int, micro_steps: int = 1
) -> tuple[Tensor, Tensor]:
    """The batch one process needs to reproduce optimizer step ``j`` of a ``world_size``-rank
    DDP run with ``micro_steps`` accumulation: the concatenation, over ranks and micro-steps,
    of the batches each rank's ``StreamingTokenDataset`` yields. DDP averages the ranks'
    gradients and accumulation averages the micro-steps, so (with equal-size batches and no
    ignored targets) the gradient of the mean loss on this batch is the same quantity."""
    xs, ys = [], []
    for r in range(world_size):
        ds = StreamingTokenDataset(tokens, seq_len, batch_size, seed=seed, rank=r, world_size=world_size)
        for m in range(micro_steps):
            x, y = ds.make_batch(ds.batch_indices(j * micro_steps + m))
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------
# Throughput of the input pipeline alone
# ------------------------------------------------------------------------------------------
class SlowSource(Dataset):
    """Wraps a map-style dataset and sleeps ``delay_ms`` per sample: a stand-in for reading
    from a network disk or decoding images (time spent *waiting*, not computing)."""

    def __init__(self, base: Dataset, delay_ms: float) -> None:
        self.base, self.delay_s = base, delay_ms / 1000.0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return self.base[i]


def make_loader(
    kind: str,
    tokens: Tensor,
    seq_len: int,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    delay_ms: float = 0.0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader over the training tokens: ``kind`` is ``"stream"`` (StreamingTokenDataset,
    batches built in the dataset) or ``"map"`` (TokenChunkDataset + DistributedSampler,
    batches collated by the DataLoader). ``delay_ms`` (map only) simulates slow storage."""
    kw = dict(num_workers=num_workers, pin_memory=pin_memory)
    if num_workers > 0 and prefetch_factor:
        kw["prefetch_factor"] = prefetch_factor
    if kind == "stream":
        if delay_ms:
            raise ValueError("delay_ms is only supported with kind='map'")
        ds = StreamingTokenDataset(tokens, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size)
        return DataLoader(ds, batch_size=None, **kw)
    if kind == "map":
        base = TokenChunkDataset(tokens, seq_len)
        ds = SlowSource(base, delay_ms) if delay_ms else base
        sampler = DistributedSampler(base, num_replicas=world_size, rank=rank, seed=seed, drop_last=True)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True, **kw)
    raise ValueError(f"kind={kind!r}: use 'stream' or 'map'")


def measure_throughput(loader: DataLoader, n_batches: int, warmup: int = 2) -> dict:
    """Iterate ``loader`` for ``warmup + n_batches`` batches; return samples/s over the last
    ``n_batches`` (steady state) and the time to the first batch (worker start-up)."""
    if warmup < 1 or n_batches < 1:
        raise ValueError("warmup and n_batches must be >= 1")
    t0 = time.perf_counter()
    it = iter(loader)
    first, t_start, samples = 0.0, 0.0, 0
    for i in range(warmup + n_batches):
        try:
            x, _ = next(it)
        except StopIteration:
            raise DataError(f"the loader ran out after {i} batches; ask for fewer batches") from None
        if i == 0:
            first = time.perf_counter() - t0
        if i == warmup - 1:
            t_start = time.perf_counter()
        elif i >= warmup:
            samples += x.shape[0]
    dt = time.perf_counter() - t_start
    del it
    return {"samples_per_s": samples / dt, "first_batch_s": first, "seconds": dt, "samples": samples}
