"""Train/val/test splits as index sets on shared arrays, and the statistics of a split.

A split is the rows of a pool (the arrays of a file) that belong to it: nothing is
copied to make one. `column_stats` scans the pool in chunks (a memory-mapped file is
never read whole) and keeps the split's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightfit.data.arrays import chunks
from lightfit.data.batches import ArrayDataset


@dataclass
class Split:
    x: Tensor | np.ndarray  # all rows of the pool this split draws from (tensor, or memmap)
    y: Tensor
    rows: Tensor  # the rows that belong to this split

    def dataset(self) -> ArrayDataset:
        return ArrayDataset(self.x, self.y, self.rows)


def split_rows(n: int, fractions: list[float], seed: int) -> list[Tensor]:
    """Cut a seeded permutation of range(n) into len(fractions)+1 parts (the rest last)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    parts, start = [], 0
    # np.sort, not Tensor.sort: the same rows, but torch's CPU sort took 0.4 s for 700,000
    # indices on a 2-core machine (np.sort 0.01 s), more than reading the table they index.
    for fraction in fractions:
        size = int(round(n * fraction))
        parts.append(torch.from_numpy(np.sort(order[start : start + size])))
        start += size
    parts.append(torch.from_numpy(np.sort(order[start:])))
    return parts


def copy_to_device(data: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """A copy of `data` on `device`; a memory-mapped array goes in chunks, never whole through RAM."""
    if isinstance(data, Tensor):
        return data.to(device)
    out = torch.empty(data.shape, dtype=torch.float32, device=device)
    for start, chunk in chunks(data):
        out[start : start + len(chunk)] = torch.from_numpy(chunk.astype(np.float32, copy=False))
    return out


def shared_tensor(array: np.ndarray) -> Tensor | np.ndarray:
    if isinstance(array, np.memmap):
        return array  # stays on disk; ArrayDataset reads the rows of each batch
    # from_numpy shares memory with the array: no copy. It needs a writable array.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def column_stats(data: Tensor | np.ndarray, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std over the training `rows` only (float64 sums, in chunks)."""
    total = torch.zeros(data.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    rows, n = np.sort(rows.numpy()), len(rows)
    x = data.numpy() if isinstance(data, Tensor) else data
    for start, chunk in chunks(x):  # the whole pool in pieces; keep the training rows of each
        first, stop = np.searchsorted(rows, [start, start + len(chunk)])
        picked = torch.from_numpy(chunk[rows[first:stop] - start].astype(np.float64))
        total += picked.sum(0)
        squares += (picked * picked).sum(0)
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: leave unscaled
    return mean.float(), std.float()
