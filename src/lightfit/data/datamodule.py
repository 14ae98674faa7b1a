"""A LightningDataModule over NumPy arrays or `.npz`/`.npy` files.

NumPy in, tensors out: arrays become tensors with `torch.from_numpy`, which shares their
memory, and the splits are index sets on those tensors, so the data are not copied
again. Feature scaling is not applied to the data: its statistics (from the training
split only) are handed to the network's `Standardize` layer, so raw inputs work at
prediction time and the statistics travel inside every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightfit.data.arrays import check_features, check_labels, features_as_float32, read_arrays
from lightfit.data.batches import ArrayDataset, batch_loader
from lightfit.errors import LightfitError

STATS_ROWS = 65536  # rows per chunk when computing feature statistics


@dataclass
class Split:
    x: Tensor | np.ndarray  # all rows of the pool this split draws from (tensor, or memmap)
    y: Tensor
    rows: Tensor  # the rows that belong to this split

    def dataset(self) -> ArrayDataset:
        return ArrayDataset(self.x, self.y, self.rows)


def split_rows(n: int, fractions: list[float], seed: int) -> list[Tensor]:
    """Cut a seeded permutation of range(n) into len(fractions)+1 parts (the rest last)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for fraction in fractions:
        size = int(round(n * fraction))
        parts.append(order[start : start + size].sort().values)
        start += size
    parts.append(order[start:].sort().values)
    return parts


def _tensor(array: np.ndarray) -> Tensor | np.ndarray:
    if isinstance(array, np.memmap):
        return array  # stays on disk; ArrayDataset reads the rows of each batch
    # from_numpy shares memory with the array: no copy. It needs a writable array.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test splits of arrays `x`, `y` (or a file) with batches gathered by index.

    Give `x`/`y` (split here into train, val and test), the Keras layout
    (`x`, `y`, `x_test`, `y_test`: the test split is given, val comes from train), or a
    `path` to a `.npz` with keys `x`/`y` or `x_train`/`y_train`/`x_test`/`y_test`, or to a
    features `.npy` (memory-mapped) with `labels` a labels `.npy`.
    """

    def __init__(
        self,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        *,
        path: str | None = None,
        labels: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_classes: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if (path is None) == (x is None):
            raise LightfitError("give either arrays (x, y) or a file (data.path=...), not both or neither")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < fraction < 1:
                raise LightfitError(f"data.{name}={fraction} must be between 0 and 1 (exclusive)")
        if batch_size < 1:
            raise LightfitError(f"data.batch_size={batch_size} must be a positive integer")
        self.arrays = None if x is None else {"x": x, "y": y, "x_test": x_test, "y_test": y_test}
        self.path, self.labels = path, labels
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.seed = batch_size, seed
        self.num_classes = num_classes
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # False: the same training batches every epoch (debug=overfit). Lightning's own
        # overfit_batches cannot turn this shuffling off: it is in the batch sampler.
        self.shuffle = shuffle
        self.splits: dict[str, Split] = {}

    # -- reading and splitting -------------------------------------------------------------

    def _load(self) -> dict[str, np.ndarray]:
        if self.arrays is not None:
            if self.arrays["y"] is None:
                raise LightfitError("labels y are missing: give both x and y")
            return {k: v for k, v in self.arrays.items() if v is not None}
        arrays = read_arrays(self.path, self.labels)
        if "x_train" in arrays:  # the Keras layout
            return {
                "x": arrays["x_train"],
                "y": arrays["y_train"],
                "x_test": arrays["x_test"],
                "y_test": arrays["y_test"],
            }
        return arrays

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # called once per stage by Lightning; the splits never change
            return
        arrays = self._load()
        source = self.path or "arrays"
        pools = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
        tensors = {}
        for xk, yk in pools:
            x = np.asarray(arrays[xk]) if not isinstance(arrays[xk], np.memmap) else arrays[xk]
            check_features(f"{source}: {xk}", x)
            y = check_labels(f"{source}: {yk}", np.asarray(arrays[yk]), len(x), self.num_classes)
            tensors[xk] = (_tensor(features_as_float32(x)), _tensor(y))
        if "x_test" in tensors and tensors["x_test"][0].shape[1:] != tensors["x"][0].shape[1:]:
            raise LightfitError(
                f"{source}: x_test rows have shape {tuple(tensors['x_test'][0].shape[1:])} "
                f"but x rows have {tuple(tensors['x'][0].shape[1:])}"
            )
        x, y = tensors["x"]
        if "x_test" in tensors:
            val, train = split_rows(len(y), [self.val_fraction], self.seed)
            xt, yt = tensors["x_test"]
            self.splits["test"] = Split(xt, yt, torch.arange(len(yt)))
        else:
            test, val, train = split_rows(len(y), [self.test_fraction, self.val_fraction], self.seed)
            self.splits["test"] = Split(x, y, test)
        self.splits["train"] = Split(x, y, train)
        self.splits["val"] = Split(x, y, val)
        for name in ("train", "val", "test"):
            if len(self.splits[name].rows) == 0:
                raise LightfitError(
                    f"{source}: the {name} split is empty ({len(y)} samples); "
                    "use more data or other fractions"
                )
        if self.batch_size > len(train):
            raise LightfitError(
                f"data.batch_size={self.batch_size} is larger than the training split ({len(train)} samples)"
            )
        if self.num_classes is None:
            self.num_classes = int(max(int(s.y.max()) for s in self.splits.values())) + 1
        self.mean, self.std = self._feature_stats(self.splits["train"])

    @staticmethod
    def _feature_stats(train: Split) -> tuple[Tensor, Tensor]:
        """Per-feature mean and std over the training rows only (float64 sums, in chunks)."""
        total = torch.zeros(train.x.shape[1:], dtype=torch.float64)
        squares = torch.zeros_like(total)
        n, dataset = len(train.rows), train.dataset()
        for start in range(0, n, STATS_ROWS):
            chunk, _ = dataset.__getitems__(torch.arange(start, min(start + STATS_ROWS, n)))
            chunk = chunk.double()
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
        mean = total / n
        std = (squares / n - mean * mean).clamp_min(0).sqrt()
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: leave unscaled
        return mean.float(), std.float()

    # -- what the network needs to know --------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    # -- loaders ---------------------------------------------------------------------------

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for a dataloader")
        return batch_loader(
            self.splits[split].dataset(),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


DIGITS = "digits.npz"


def digits_path() -> Path:
    """The UCI handwritten digits shipped with lightfit (1797 x 8 x 8, 10 classes)."""
    return Path(str(resources.files("lightfit.data").joinpath(DIGITS)))


def digits(**kwargs) -> ArrayDataModule:
    """The default dataset: the packaged digits through the same ArrayDataModule."""
    return ArrayDataModule(path=str(digits_path()), **kwargs)
