"""Batches gathered a whole batch at a time: one indexing operation, no per-sample collate.

A stock `TensorDataset` + `DataLoader` calls `__getitem__` once per sample and stacks the
results (`collate`); on small networks that costs more than the model. Here the
DataLoader's batch sampler yields one index tensor per batch and the dataset answers
with `x.index_select(0, rows)`, the rows copied whole. It is still a stock DataLoader
with a `BatchSampler`, so Lightning and Fabric can swap in a `DistributedSampler` under
DDP as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


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
        # Memory-mapped file: read just these rows, then wrap them without another copy.
        batch = np.asarray(self.x[rows.numpy()], dtype=np.float32)
        return torch.from_numpy(batch), y

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([position])
        return x[0], y[0]


class EpochShuffleSampler(RandomSampler):
    """A new permutation each epoch, drawn from `seed + epoch` only.

    The order of an epoch depends on nothing else (not on global RNG use by dropout or
    by other code), so the three loops see the same batches and a resumed run sees the
    same order as an uninterrupted one. Lightning calls `set_epoch`; a plain loop must too.
    It subclasses RandomSampler so that Lightning replaces it by a shuffling
    DistributedSampler (seeded the same way) under DDP.
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
    """Yields each batch as one index tensor, sliced from the epoch's order."""

    def __iter__(self):
        if isinstance(self.sampler, EpochShuffleSampler):
            order = self.sampler.permutation()
        elif isinstance(self.sampler, SequentialSampler):
            order = torch.arange(len(self.sampler))
        else:  # e.g. the DistributedSampler that Lightning injects: one conversion per epoch
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size]


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
) -> DataLoader:
    sampler = EpochShuffleSampler(dataset, seed) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=IndexBatchSampler(sampler, batch_size, drop_last),
        collate_fn=_as_is,
        # Its own generator: creating an iterator draws a worker seed from it, not from the
        # global RNG, so the number of loaders iterated never changes dropout or init.
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
