"""The cases that train in this process: plain PyTorch, Lightning without lightfit, Keras, the loader."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bench.workloads import Workload, device, network, optimizer, summary, sync, train_tensors

# -- plain PyTorch ---------------------------------------------------------------------------


def timed_epochs(w: Workload, batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]]) -> list[float]:
    """Seconds per epoch of forward, loss, backward, step over `batches(epoch)`, warm-up dropped."""
    torch.manual_seed(0)
    dev = device()
    net = network(w).to(dev)
    opt = optimizer(w, net.parameters())
    net.train()
    seconds = []
    for epoch in range(w.epochs):
        start = time.perf_counter()
        for x, y in batches(epoch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)  # no-op when already there
            train_step(net, opt, x, y)
        sync(dev)
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def case_floor(w: Workload) -> dict[str, Any]:
    """What the training itself costs: batches sliced once, in order, already on the device."""
    batches = sliced_batches(w)
    return summary(timed_epochs(w, lambda epoch: batches), w.train_samples)


def sliced_batches(w: Workload) -> list[tuple[Tensor, Tensor]]:
    """The training rows in batches, in order, sliced once and already on the device."""
    x, y = (t.to(device()) for t in train_tensors(w))
    return [(x[i : i + w.batch_size], y[i : i + w.batch_size]) for i in range(0, len(y), w.batch_size)]


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """Forward, loss, backward, step: the floor's work per batch."""
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def case_plain_loop(w: Workload) -> dict[str, Any]:
    """The floor's loop over lightfit's train loader: a new order each epoch, one gather per batch."""
    loader = w.datamodule.train_dataloader()

    def batches(epoch: int) -> DataLoader:
        loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        return loader

    return summary(timed_epochs(w, batches), w.train_samples)


def case_loader(w: Workload) -> dict[str, Any]:
    """Batches alone, no training: lightfit's train loader vs TensorDataset + DataLoader(shuffle=True)."""
    torch.manual_seed(0)
    ours = w.datamodule.train_dataloader()
    stock = DataLoader(TensorDataset(*train_tensors(w)), batch_size=w.batch_size, shuffle=True)
    speed = {}
    for name, loader in (("lightfit", ours), ("tensordataset", stock)):
        seconds = []
        for epoch in range(w.epochs):
            ours.batch_sampler.sampler.set_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds.append(time.perf_counter() - start)
        speed[name] = w.train_samples / statistics.median(seconds[1:])
    return {
        "lightfit_samples_per_second": speed["lightfit"],
        "tensordataset_samples_per_second": speed["tensordataset"],
        "speedup": speed["lightfit"] / speed["tensordataset"],
    }


# -- Lightning without lightfit --------------------------------------------------------------


class MinimalModule(L.LightningModule):
    """The least a LightningModule can be: a network, a loss, an optimizer."""

    def __init__(self, net: nn.Module, make_optimizer: Callable[..., torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net, self.make_optimizer = net, make_optimizer

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


class EpochClock(L.Callback):
    """The wall-clock time at the end of each training epoch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sync(module.device)
        self.ends.append(time.perf_counter())


def lightning_fit(w: Workload, loader: DataLoader, **trainer_flags: Any) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    clock = EpochClock()
    trainer = L.Trainer(
        max_epochs=w.epochs, accelerator="auto", devices=1, callbacks=[clock], **trainer_flags
    )
    trainer.fit(MinimalModule(network(w), partial(optimizer, w)), loader)
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    return summary(seconds, len(loader.dataset))


def case_lightning_barebones(w: Workload) -> dict[str, Any]:
    """Lightning's own cost per step: lightfit's loader, a minimal module, Trainer(barebones=True)."""
    return lightning_fit(w, w.datamodule.train_dataloader(), barebones=True)


def case_naive_lightning(w: Workload) -> dict[str, Any]:
    """A minimal LightningModule fed the usual way: TensorDataset + DataLoader(shuffle=True)."""
    loader = DataLoader(TensorDataset(*train_tensors(w)), batch_size=w.batch_size, shuffle=True)
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return lightning_fit(w, loader, enable_model_summary=False, **off)


# -- Keras ----------------------------------------------------------------------------------


def case_keras(w: Workload) -> dict[str, Any]:
    """Keras 3 `fit()` on NumPy arrays, torch backend: the same layers, shuffled each epoch."""
    os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
    try:
        import keras
    except ImportError:
        return {"skipped": "Keras 3 is not installed (pip install -e '.[bench]')"}
    if keras.backend.backend() != "torch":
        return {"skipped": f"Keras was imported with the {keras.backend.backend()} backend"}
    keras.utils.set_random_seed(0)
    dm = w.datamodule
    x, y = (t.numpy() for t in train_tensors(w))
    mean, std = dm.mean.flatten().numpy(), dm.std.flatten().numpy()
    layers = [
        keras.Input(dm.input_shape),
        keras.layers.Flatten(),
        keras.layers.Normalization(mean=mean, variance=std**2),
    ]
    for width in w.hidden:
        layers.append(keras.layers.Dense(width, activation="relu"))
        layers += [keras.layers.Dropout(w.dropout)] if w.dropout else []
    model = keras.Sequential([*layers, keras.layers.Dense(dm.num_outputs)])
    opt = keras.optimizers.SGD(0.05, momentum=0.9) if w.optimizer == "sgd" else keras.optimizers.Adam(1e-3)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    ends = []
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=w.batch_size, epochs=w.epochs, shuffle=True, verbose=0, callbacks=[clock])
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return summary(seconds, len(y), version=keras.__version__)
