"""The cases that train in this process: plain PyTorch, Lightning without lightfit, Keras, the loader."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bench.workloads import Workload, device, network, optimizer, summary, sync, train_tensors
from lightfit.loops.explicit import set_epoch

# -- plain PyTorch ---------------------------------------------------------------------------


def timed_epochs(
    w: Workload,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    after_epoch: Callable[[], None] | None = None,
    fabric: L.Fabric | None = None,
) -> list[float]:
    """Seconds per epoch of forward, loss, backward, step over `batches(epoch)`, warm-up dropped.

    `after_epoch()` runs at each epoch's end, outside the timing (bench/turn_worker.py waits
    there for its turn). With `fabric`, the network and optimizer are set up by it and
    backward goes through it.
    """
    torch.manual_seed(0)
    net = network(w)
    opt = optimizer(w, net.parameters())
    if fabric is None:
        dev, backward = device(), Tensor.backward
        net = net.to(dev)  # in place: the optimizer's parameters move with it
    else:
        dev, backward = fabric.device, fabric.backward
        net, opt = fabric.setup(net, opt)
    net.train()
    seconds = []
    for epoch in range(w.epochs):
        start = time.perf_counter()
        for x, y in batches(epoch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)  # no-op when already there
            train_step(net, opt, x, y, backward)
        sync(dev)
        seconds.append(time.perf_counter() - start)
        if after_epoch is not None:
            after_epoch()
    return seconds[1:]


def case_floor(w: Workload) -> dict[str, Any]:
    """What the training itself costs: batches sliced once, in order, already on the device."""
    batches = sliced_batches(w)
    return summary(timed_epochs(w, lambda epoch: batches), w.train_samples)


def sliced_batches(w: Workload) -> list[tuple[Tensor, Tensor]]:
    """The training rows in batches, in order, sliced once and already on the device."""
    x, y = (t.to(device()) for t in train_tensors(w))
    return [(x[i : i + w.batch_size], y[i : i + w.batch_size]) for i in range(0, len(y), w.batch_size)]


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    backward: Callable[[Tensor], Any] = Tensor.backward,
) -> None:
    """Forward, loss, backward, step: the floor's work per batch."""
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    backward(loss)
    opt.step()


def case_plain_loop(w: Workload, after_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
    """The floor's loop over lightfit's train loader: a new order each epoch, one gather per batch."""
    loader = w.datamodule.train_dataloader()

    def batches(epoch: int) -> DataLoader:
        loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        return loader

    return summary(timed_epochs(w, batches, after_epoch), w.train_samples)


def case_fabric_loop(w: Workload, after_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
    """The plain loop written with Lightning Fabric as the explicit loop uses it (setup,
    setup_dataloaders, fabric.backward), nothing else of lightfit: what Fabric's wrappers cost."""
    fabric = L.Fabric(accelerator="auto", devices=1)
    loader = fabric.setup_dataloaders(w.datamodule.train_dataloader(), use_distributed_sampler=False)

    def batches(epoch: int) -> DataLoader:
        set_epoch(loader, epoch)
        return loader

    return summary(timed_epochs(w, batches, after_epoch, fabric), w.train_samples)


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


def lightning_fit(
    w: Workload,
    loader: DataLoader | None,
    clock: EpochClock | None = None,
    module: Callable[..., MinimalModule] | None = None,
    callbacks: Iterable[L.Callback] = (),
    **trainer_flags: Any,
) -> dict[str, Any]:
    """Fit the minimal module (or `module`) on `loader`, or on the workload's data module when
    `loader` is None; `clock`, its first callback, may be a subclass (bench/turn_worker.py)."""
    L.seed_everything(0, verbose=False)
    clock = clock or EpochClock()
    flags = {"max_epochs": w.epochs, "accelerator": "auto", "devices": 1, **trainer_flags}
    trainer = L.Trainer(callbacks=[clock, *callbacks], **flags)
    net = (module or MinimalModule)(network(w), partial(optimizer, w))
    if loader is None:
        trainer.fit(net, datamodule=w.datamodule)
    else:
        trainer.fit(net, loader)
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    return summary(seconds, w.train_samples)


def case_lightning_barebones(w: Workload, clock: EpochClock | None = None) -> dict[str, Any]:
    """Lightning's own cost per step: lightfit's loader, a minimal module, Trainer(barebones=True)."""
    return lightning_fit(w, w.datamodule.train_dataloader(), clock, barebones=True)


def case_lightning_trainer(w: Workload, clock: EpochClock | None = None) -> dict[str, Any]:
    """The minimal module with Lightning's full Trainer, its logger, checkpoints, progress bar and
    model summary off (lightfit brings its own): what Lightning costs per step beyond barebones."""
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return lightning_fit(w, w.datamodule.train_dataloader(), clock, enable_model_summary=False, **off)


class ValidatedModule(MinimalModule):
    """The minimal module that also validates: the loss on the validation split, logged per epoch."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))


def case_lightning_validated(w: Workload, clock: EpochClock | None = None) -> dict[str, Any]:
    """lightning-trainer as Lightning's docs train: the workload's LightningDataModule passed to
    fit and a validation_step each epoch (600 samples in (b)), what every lightfit run also does.
    What Lightning costs for that (its per-batch data-module hook checks, the evaluation loop)
    is then set apart from what lightfit adds."""
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    flags = {"enable_model_summary": False, "num_sanity_val_steps": 0, **off}
    return lightning_fit(w, None, clock, module=ValidatedModule, **flags)


class FullModule(MinimalModule):
    """The module a lightning-hydra-template user writes: torchmetrics accuracy and a mean loss
    per stage, each fed every step and logged with `self.log(..., on_epoch=True)`."""

    def __init__(
        self, net: nn.Module, make_optimizer: Callable[..., torch.optim.Optimizer], classes: int = 10
    ) -> None:
        super().__init__(net, make_optimizer)
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy

        self.train_acc, self.val_acc = (MulticlassAccuracy(classes) for _ in range(2))
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()

    def _stage_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss_metric, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric(loss)
        acc(logits, y)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._stage_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._stage_step(batch, "val")


def case_lightning_full(
    w: Workload, clock: EpochClock | None = None, tmp: Path | None = None
) -> dict[str, Any]:
    """Stock Lightning set up as lightning-hydra-template's defaults are: the data module, validation
    each epoch, torchmetrics accuracy and loss logged per step with on_epoch=True for train and val,
    ModelCheckpoint on val/loss with save_last, EarlyStopping (patience 100: it never stops here),
    the CSVLogger and the TQDM bar (drawn when stdout is a terminal, as in the turns). What a user
    would build instead of lightfit; issue 27 asks lightfit's run with callbacks to cost <= 0.80x it."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    root = Path(tmp or tempfile.mkdtemp()) / f"lightning-full-{os.getpid()}"
    callbacks = [
        ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/loss", mode="min", save_last=True),
        EarlyStopping(monitor="val/loss", mode="min", patience=100),
    ]
    module = partial(FullModule, classes=w.datamodule.num_outputs)
    return lightning_fit(
        w, None, clock, module=module, callbacks=callbacks, logger=CSVLogger(root), default_root_dir=root
    )


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
