"""A LightningDataModule over NumPy arrays or `.npz`/`.npy` files.

NumPy in, tensors out: arrays become tensors with `torch.from_numpy`, which shares their
memory, and the splits are index sets on those tensors, so the data are not copied
again. Feature scaling is not applied to the data: its statistics (from the training
split only) are handed to the network's `Standardize` layer, so raw inputs work at
prediction time and the statistics travel inside every checkpoint.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightfit.data.arrays import (
    check_features,
    check_labels,
    check_targets,
    features_as_float32,
    read_arrays,
    warn_integer_targets,
)
from lightfit.data.batches import batch_loader
from lightfit.data.folds import fold_split
from lightfit.data.splits import Split, column_stats, copy_to_device, shared_tensor, split_rows
from lightfit.errors import LightfitError

# data.on_device=auto puts the data on the GPU when they take at most this share of its free
# memory: the rest is for the network, its activations and the optimizer.
ON_DEVICE_FRACTION = 0.25


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test splits of arrays `x`, `y` (or a file) with batches gathered by index.

    Give `x`/`y` (split here into train, val and test), the Keras layout
    (`x`, `y`, `x_test`, `y_test`: the test split is given, val comes from train), or a
    `path` to a `.npz` with keys `x`/`y` or `x_train`/`y_train`/`x_test`/`y_test`, or to a
    features `.npy` (memory-mapped) with `labels` a labels `.npy`. `task`: classification
    (integer class labels) or regression (float targets, (N,) or (N, k)). On CUDA, `on_device`
    and `pin_memory` (true, false or auto) decide where batches are gathered; under DDP
    each process gets its own shard (see `distribute`).
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
        pin_memory: bool | str = "auto",
        on_device: bool | str = "auto",
        shuffle: bool = True,
        task: str = "classification",
    ) -> None:
        super().__init__()
        if task not in ("classification", "regression"):
            raise LightfitError(f"task={task} is not one of classification, regression")
        if task == "regression" and num_classes is not None:
            raise LightfitError(f"data.num_classes={num_classes} is for classification, not task=regression")
        if (path is None) == (x is None):
            raise LightfitError("give either arrays (x, y) or a file (data.path=...), not both or neither")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < fraction < 1:
                raise LightfitError(f"data.{name}={fraction} must be between 0 and 1 (exclusive)")
        if batch_size < 1:
            raise LightfitError(f"data.batch_size={batch_size} must be a positive integer")
        for name, value in (("pin_memory", pin_memory), ("on_device", on_device)):
            if value not in (True, False, "auto"):
                raise LightfitError(f"data.{name}={value} must be true, false or auto")
        if on_device is True and num_workers > 0:
            raise LightfitError("data.on_device=true gathers batches on the GPU; set data.num_workers=0")
        self.arrays = None if x is None else {"x": x, "y": y, "x_test": x_test, "y_test": y_test}
        self.path, self.labels = path, labels
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.seed = batch_size, seed
        self.num_classes = num_classes
        self.num_workers, self.pin_memory, self.on_device = num_workers, pin_memory, on_device
        # False: the same training batches every epoch (debug=overfit). Lightning's own
        # overfit_batches cannot turn this shuffling off: it is in the batch sampler.
        self.shuffle = shuffle
        self.task = task
        self.splits: dict[str, Split] = {}
        # Which process this is under DDP, and where its batches go (see `distribute`).
        self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches trained): see resume_train_at
        self.fold: tuple[int, int] | None = None  # (k, K): cross-validation's fold k of K (use_fold)

    # -- reading and splitting -------------------------------------------------------------

    def use_fold(self, k: int, folds: int) -> None:
        """Before `setup`: validate on fold `k` (from 1) of `folds`, train on the others (data/folds.py).
        The test split is the one a plain run holds out; the folds cut its train and val rows."""
        self.fold = (k, folds)

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
        if not self.splits:  # called once per stage by Lightning; the splits never change
            self._read_and_split()
        if self.trainer is not None:  # Lightning: the process group and device are set up by now
            self.distribute(
                self.trainer.global_rank, self.trainer.world_size, self.trainer.strategy.root_device
            )

    def _read_and_split(self) -> None:
        arrays = self._load()
        source = self.path or "arrays"
        pools = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
        if self.task == "regression":
            warn_integer_targets(f"{source}: y", np.asarray(arrays["y"]))
        tensors = {}
        for xk, yk in pools:
            x = np.asarray(arrays[xk]) if not isinstance(arrays[xk], np.memmap) else arrays[xk]
            check_features(f"{source}: {xk}", x)
            if self.task == "regression":
                y = check_targets(f"{source}: {yk}", np.asarray(arrays[yk]), len(x))
            else:
                y = check_labels(f"{source}: {yk}", np.asarray(arrays[yk]), len(x), self.num_classes)
            tensors[xk] = (shared_tensor(features_as_float32(x)), shared_tensor(y))
        if "x_test" in tensors:
            for i, what in ((0, "x"), (1, "y")):
                test_shape, shape = tuple(tensors["x_test"][i].shape[1:]), tuple(tensors["x"][i].shape[1:])
                if test_shape != shape:
                    raise LightfitError(
                        f"{source}: {what}_test rows have shape {test_shape} but {what} rows have {shape}"
                    )
        x, y = tensors["x"]
        if "x_test" in tensors:
            val, train = split_rows(len(y), [self.val_fraction], self.seed)
            xt, yt = tensors["x_test"]
            self.splits["test"] = Split(xt, yt, torch.arange(len(yt)))
        else:
            test, val, train = split_rows(len(y), [self.test_fraction, self.val_fraction], self.seed)
            self.splits["test"] = Split(x, y, test)
        if self.fold is not None:  # cross-validation: the same test rows, the rest cut in folds
            classification = self.task == "classification"
            names = getattr(self, "class_names", None)
            pool = torch.cat([val, train])
            val, train = fold_split(pool, y, self.fold, self.seed, stratified=classification, names=names)
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
        if self.num_classes is None and self.task == "classification":
            self.num_classes = int(max(int(s.y.max()) for s in self.splits.values())) + 1
        train_split = self.splits["train"]
        self.mean, self.std = column_stats(train_split.x, train_split.rows)
        if self.task == "regression":  # the network learns standardised targets (nets.TargetScale)
            self.target_stats = column_stats(train_split.y, train_split.rows)

    def split_rows_in_file(self) -> dict[str, np.ndarray]:
        """Each split's rows: rows of x (in the Keras layout, the test split's are rows of x_test)."""
        return {name: split.rows.cpu().numpy() for name, split in self.splits.items()}

    # -- what the network needs to know --------------------------------------------------------

    def train_labels(self) -> Tensor:
        """The training split's labels, one per sample (task.class_weight=balanced counts them)."""
        split = self.splits["train"]
        return split.y[split.rows]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...] | None:
        """Regression: () for targets of shape (N,), (k,) for (N, k). Classification: None."""
        return tuple(self.splits["train"].y.shape[1:]) if self.task == "regression" else None

    @property
    def num_outputs(self) -> int:
        """The width of the network's output: the class count, or the number of targets."""
        if self.target_shape is None:
            return int(self.num_classes)
        return int(np.prod(self.target_shape)) if self.target_shape else 1

    # -- processes and devices ----------------------------------------------------------------

    def distribute(self, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> None:
        """Make the loaders give this process (`rank` of `world_size`) its shard, on `device`.

        `setup` calls it with the Trainer's values; the explicit loop calls it with Fabric's.
        On CUDA the data move to the GPU once when `on_device` allows it; otherwise batches
        are gathered in page-locked host memory and copied without blocking.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.rank, self.world_size, self.device = rank, world_size, device
        for name, split in self.splits.items():
            if len(split.rows) < world_size:
                raise LightfitError(
                    f"the {name} split has {len(split.rows)} samples, fewer than the {world_size} "
                    "processes; every process needs at least one"
                )
        if self._data_on_device():
            moved: dict[int, Tensor] = {}  # the splits share their arrays: move each one once
            for split in self.splits.values():
                for name in ("x", "y", "rows"):
                    data = getattr(split, name)
                    if id(data) not in moved:
                        moved[id(data)] = copy_to_device(data, self.device)
                    setattr(split, name, moved[id(data)])

    def _data_on_device(self) -> bool:
        """Whether the data (should) live on the device: data.on_device=true, or auto and they fit."""
        if self.device.type != "cuda" or self.on_device is False:
            return False
        if self.on_device is True:
            return True
        if self.num_workers > 0:
            return False
        tensors = {id(t): t for s in self.splits.values() for t in (s.x, s.y)}.values()
        if all(isinstance(t, Tensor) and t.device == self.device for t in tensors):
            return True  # moved already (Lightning calls setup once per stage)
        # A memory-mapped file goes to the device as float32 (copy_to_device): 4 bytes a value.
        size = sum(t.nbytes if isinstance(t, Tensor) else t.size * 4 for t in tensors)
        free, _ = torch.cuda.mem_get_info(self.device)
        return size <= ON_DEVICE_FRACTION * free

    # -- loaders ---------------------------------------------------------------------------

    def resume_train_at(self, epoch: int, batches: int) -> None:
        """The training loader starts `epoch` (0-based) after its first `batches` global batches."""
        self.resume_at = (epoch, batches)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for a dataloader")
        dataset = self.splits[split].dataset()
        on_device = (
            self.device.type != "cpu" and isinstance(dataset.x, Tensor) and dataset.x.device == self.device
        )
        pin = self.pin_memory is True or (self.pin_memory == "auto" and self.device.type == "cuda")
        return batch_loader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            pin_memory=pin and not on_device,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device if on_device else None,  # index tensors live with the data
            resume_at=self.resume_at if split == "train" else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
