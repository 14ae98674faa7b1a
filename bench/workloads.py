"""The workloads: one data set, network and batch size each, which every case trains alike."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightfit.data import ArrayDataModule, digits
from lightfit.nets import MLP, build_network


@dataclass
class Workload:
    """One data set, network and batch size; every case of the workload trains exactly this."""

    name: str
    title: str
    datamodule: ArrayDataModule  # set up: its train split is the training data of every case
    batch_size: int
    hidden: list[int]
    dropout: float
    optimizer: str  # "sgd" or "adam", with lightfit's conf/optimizer settings
    epochs: int  # in all, the first one a warm-up
    overrides: list[str] = field(default_factory=list)  # the same workload for python -m lightfit.train

    @property
    def train_samples(self) -> int:
        return len(self.datamodule.splits["train"].rows)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_samples // self.batch_size)  # the last batch may be short


def make_synthetic_npz(path: Path, rows: int, features: int = 784, classes: int = 10) -> None:
    """Random features, labels from a fixed random linear map (so that there is something to learn)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = (x @ rng.standard_normal((features, classes), dtype=np.float32)).argmax(1)
    np.savez(path, x=x, y=y.astype(np.int64))


def workloads(args: argparse.Namespace, tmp: Path) -> list[Workload]:
    """The workloads named in `args.workloads`, their data set up (synthetic data written to `tmp`)."""
    epochs = {"a": args.digits_epochs, "b": args.epochs + 1, "c": args.epochs + 1}
    return [make_workload(name, tmp, args.rows, epochs[name]) for name in "abc" if name in args.workloads]


def make_workload(name: str, tmp: Path, rows: int, epochs: int) -> Workload:
    """Workload a, b or c with `epochs` in all, set up; b and c read (or first write) tmp/synthetic.npz."""
    if name == "a":  # `make train` as it is: digits, MLP [128], dropout 0.1, Adam, batch 64
        dm = digits(batch_size=64, seed=0)
        w = Workload("a", "digits, the default run", dm, 64, [128], 0.1, "adam", epochs)
    else:
        batch = {"b": 128, "c": 1024}[name]
        path = tmp / "synthetic.npz"
        if not path.exists():
            make_synthetic_npz(path, rows)
        dm = ArrayDataModule(path=str(path), batch_size=batch, seed=0, val_fraction=0.01, test_fraction=0.01)
        overrides = [
            *("data=npz", f"data.path={path}", f"data.batch_size={batch}"),
            *("data.val_fraction=0.01", "data.test_fraction=0.01"),
            *("model.hidden=[256]", "model.dropout=0", "optimizer=sgd"),
        ]
        title = f"synthetic {rows} x 784, 10 classes, MLP 784-256-10, SGD, batch {batch}"
        w = Workload(name, title, dm, batch, [256], 0.0, "sgd", epochs, overrides)
    w.datamodule.setup("fit")
    return w


def train_tensors(w: Workload) -> tuple[Tensor, Tensor]:
    """The training rows of the workload gathered into two tensors, (N, *input_shape) and (N,)."""
    train = w.datamodule.splits["train"]
    return train.dataset().__getitems__(torch.arange(len(train.rows)))


def network(w: Workload) -> nn.Module:
    dm = w.datamodule
    make = partial(MLP, hidden=w.hidden, dropout=w.dropout)
    return build_network(make, dm.input_shape, dm.num_outputs, dm.mean, dm.std)


def optimizer(w: Workload, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    if w.optimizer == "sgd":  # conf/optimizer/sgd.yaml
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)  # conf/optimizer/adam.yaml


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously: wait for it before reading the clock


def summary(seconds: list[float], samples: int, **extra: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"epoch_seconds": median, "samples_per_second": samples / median, "epochs": seconds, **extra}
