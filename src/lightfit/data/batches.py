"""Batches gathered a whole batch at a time: one indexing operation, no per-sample collate.

A stock `TensorDataset` + `DataLoader` calls `__getitem__` once per sample and stacks the
results (`collate`); on small networks that costs more than the model. Here the
DataLoader's batch sampler yields one index tensor per batch and the dataset answers
with `x.index_select(0, rows)`, the rows copied whole. It is still a stock DataLoader
with a `BatchSampler`.

Under DDP the batch sampler also shards: each rank takes its own part of every batch of
`world_size * batch_size` samples. Lightning's and Fabric's DistributedSampler are turned
off (`use_distributed_sampler=False`): it pads the data so that every rank gets the same
count, and the padded duplicates would be counted twice in validation and test metrics.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from lightfit.data.arrays import read_rows


class ArrayDataset(Dataset):
    """Rows `rows` of features `x` and labels `y`; `x` is a tensor or a (memory-mapped) array.

    Positions 0..len-1 index `rows`, so the train, val and test splits are views on the
    same arrays and nothing is copied to make them.
    """

    def __init__(self, x: Tensor | np.ndarray, y: Tensor, rows: Tensor) -> None:
        self.x, self.y, self.rows = x, y, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: Tensor | list[int]) -> tuple[Tensor, Tensor]:
        rows = self.rows.index_select(0, torch.as_tensor(positions, dtype=torch.long))
        # index_select copies whole rows; `x[rows]` (advanced indexing) gathers element by
        # element and is about 10x slower on CPU, more than the step of a small network.
        y = self.y.index_select(0, rows)
        if isinstance(self.x, Tensor):
            return self.x.index_select(0, rows), y
        # Memory-mapped file: read just these rows (plain reads, see read_rows), then wrap
        # them without another copy.
        batch = read_rows(self.x, rows.numpy()).astype(np.float32, copy=False)
        return torch.from_numpy(batch), y

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([position])
        return x[0], y[0]


class EpochShuffleSampler(RandomSampler):
    """A new permutation each epoch, drawn from `seed + epoch` only.

    The order of an epoch depends on nothing else (not on global RNG use by dropout or
    by other code), so the three loops see the same batches and a resumed run sees the
    same order as an uninterrupted one. Lightning calls `set_epoch`; a plain loop must too.
    Under DDP every rank draws the same permutation and `IndexBatchSampler` cuts it up.
    """

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.data_source), generator=generator)

    def __iter__(self):
        return iter(self.permutation().tolist())


class IndexBatchSampler(BatchSampler):
    """Yields each batch as one index tensor, sliced from the epoch's order.

    With `world_size` > 1 the order is cut into global batches of `world_size * batch_size`
    and rank r takes the r-th part of each: ranks see distinct samples, together all of
    them, nothing padded, and the same number of batches (DDP needs the same number of
    backward passes on every rank). Every rank draws the same order (the sampler's seed
    and epoch), so the parts fit together. `device`: where the index tensors go (the GPU
    when the data live there, so that gathering a batch never waits for the host).

    `resume_at=(epoch, batches)`: a run resumed from a checkpoint written in the middle of
    `epoch` skips the global batches already trained in it, and only in that epoch (the
    order depends on seed and epoch alone, so the rest is what the stopped run would have
    seen). `len()` stays the whole epoch: Lightning counts the skipped batches as done.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        resume_at: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.resume_at = resume_at

    def _bounds(self, n: int) -> list[int]:
        """Where the global batches of an epoch of `n` samples start, and where the last one ends."""
        step = self.batch_size * self.world_size
        stop = n - n % step if self.drop_last else n
        bounds = [*range(0, stop, step), stop]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.world_size:
            del bounds[-2]  # a tail too short to give every rank a sample joins the batch before it
        return bounds

    def __len__(self) -> int:
        return len(self._bounds(len(self.sampler))) - 1

    def __iter__(self):
        if isinstance(self.sampler, EpochShuffleSampler):
            order = self.sampler.permutation()
        elif isinstance(self.sampler, SequentialSampler):
            order = torch.arange(len(self.sampler))
        else:  # any other sampler: one conversion per epoch
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        order = order.to(self.device) if self.device is not None else order  # one copy per epoch
        bounds = self._bounds(len(order))
        if self.resume_at is not None and self.resume_at[0] == getattr(self.sampler, "epoch", 0):
            bounds = bounds[self.resume_at[1] :]  # trained before the checkpoint: same batches on every rank
        for start, stop in pairwise(bounds):
            yield order[start:stop].tensor_split(self.world_size)[self.rank]  # views, no copies


def _as_is(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch  # the dataset already returns a whole batch; a module-level function pickles


def batch_loader(
    dataset: ArrayDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume_at: tuple[int, int] | None = None,
) -> DataLoader:
    """Batches of `dataset`; under DDP, this rank's part of them (see `IndexBatchSampler`)."""
    sampler = EpochShuffleSampler(dataset, seed) if shuffle else SequentialSampler(dataset)
    batches = IndexBatchSampler(sampler, batch_size, drop_last, rank, world_size, device, resume_at)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_as_is,
        # Its own generator: creating an iterator draws a worker seed from it, not from the
        # global RNG, so the number of loaders iterated never changes dropout or init.
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        # Page-locked host memory: the copy to the GPU can then run while the GPU computes
        # (Lightning and Fabric copy batches with non_blocking=True).
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
