"""The explicit loop: a plain PyTorch `fit()` you can keep across projects.

Forward, loss, backward, step, in the order you would write them by hand. Lightning
Fabric handles only devices and processes, so the same function runs on CPU, one GPU
and DDP; each line where Fabric replaces plain PyTorch says so in a comment. Compare with
`automatic.py` (Lightning writes all of this) and `manual.py` (you write it inside
Lightning): with the same seed all three end with the same weights.

    fabric = Fabric(accelerator="cpu")
    model, optimizer = fabric.setup(net, optimizer)       # instead of net.to(device)
    val_loader = fabric.setup_dataloaders(val_loader)     # fit() moves the train batches itself
    task = Task("classification", num_outputs=10)            # the loss and the metrics
    history = fit(fabric, model, optimizer, train_loader, val_loader, epochs=5, task=task)
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.wrappers import is_wrapped
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from lightfit.errors import LightfitError
from lightfit.run.checkpoint import net_weights
from lightfit.run.resume import RNG_KEY, restore_rng_states, rng_states
from lightfit.tasks import StageMetrics, Task, scalars

EpochHook = Callable[[int, dict[str, float]], None]  # (epoch, metrics of that epoch)
StepHook = Callable[[int, int], None]  # (epoch, batches trained in it), right after an optimizer step


class StopTraining(Exception):
    """`fit` stopped because `should_stop()` said so (a signal); `epoch`, `batch` say where."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__(f"epoch {epoch + 1}, batch {batch}")
        self.epoch, self.batch = epoch, batch


def num_batches(loader: DataLoader, limit: int | float | None) -> int:
    """How many batches an epoch takes: all, a count, or a fraction (Lightning's limit_*_batches)."""
    total = len(loader)
    if limit is None:
        return total
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(total * limit))
    return min(total, int(limit))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler which epoch it is, so that it shuffles differently each epoch.

    Lightning's loops do this for you; a plain loop must, or every epoch (and, under DDP,
    every rank's shard) comes in the same order. A loader from `fabric.setup_dataloaders`
    sets it again, from its own count of passes: that is why `fit` takes the train loader
    unwrapped when it resumes at a later epoch.
    """
    for obj in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def train_epoch(
    fabric: Fabric,
    model: nn.Module,
    optimizer: Optimizer,
    loader: DataLoader,
    task: Task,
    metrics: StageMetrics,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    limit_batches: int | float | None = None,
    should_stop: Callable[[], bool] | None = None,
    start_batch: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """One pass over `loader`; returns the number of batches trained (fewer if stopped).

    `start_batch`: the epoch resumes after that many batches, which the loader skips itself
    (`IndexBatchSampler(resume_at=...)`). `on_step(batches)` and `should_stop()` are asked
    only right after an optimizer step and before the last batch: a checkpoint or a stop
    there loses no accumulated gradients and resumes exactly.
    """
    model.train()
    n = num_batches(loader, limit_batches)
    batch_idx = start_batch - 1
    batches = itertools.islice(loader, n - start_batch)
    for batch_idx, batch in enumerate(batches, start_batch):
        x, y = fabric.to_device(batch)  # Fabric: instead of x.to(device), y.to(device)
        step_now = (batch_idx + 1) % accumulate_grad_batches == 0 or batch_idx + 1 == n
        # Fabric: skip the DDP gradient all-reduce while accumulating (plain PyTorch: model.no_sync()).
        with fabric.no_backward_sync(model, enabled=not step_now):
            outputs = model(x)  # (B, num_classes) scores, or targets in the units of y
            loss = task.loss(outputs, y)
            # Fabric: instead of loss.backward(). Each batch's share of an accumulated step is
            # loss / k; with k = 1 the division is skipped, a graph node less per step.
            fabric.backward(loss / accumulate_grad_batches if accumulate_grad_batches > 1 else loss)
        metrics.update(outputs, y, loss)  # on the device; no .item() here, it would sync each step
        if step_now:
            if gradient_clip_val:
                # Fabric: instead of nn.utils.clip_grad_norm_(); unscales mixed-precision grads first.
                fabric.clip_gradients(model, optimizer, max_norm=gradient_clip_val)
            optimizer.step()
            optimizer.zero_grad()
            if batch_idx + 1 < n:
                if on_step is not None:
                    on_step(batch_idx + 1)  # a step checkpoint
                if should_stop is not None and should_stop():
                    break
    return batch_idx + 1


@torch.no_grad()  # evaluation builds no graph: less memory, faster
def evaluate_epoch(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], task: Task, metrics: StageMetrics
) -> dict[str, Tensor]:
    """The stage's metrics over `loader`, scalars and tables (a confusion matrix) alike."""
    was_training = model.training
    model.eval()  # dropout off, batch norm uses its running statistics
    for x, y in loader:
        outputs = model(x)
        metrics.update(outputs, y, task.loss(outputs, y))
    results = metrics.compute()  # under DDP: states synced across ranks, then reduced
    metrics.reset()
    model.train(was_training)
    return results


def fit(  # long: the whole loop in one function, to be read (and copied) in one piece
    fabric: Fabric,
    model: nn.Module,
    optimizer: Optimizer,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    *,
    epochs: int,
    task: Task,
    scheduler: LRScheduler | None = None,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    start_epoch: int = 0,
    start_batch: int = 0,
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    on_epoch_end: EpochHook | None = None,
    on_step: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    train_metrics: StageMetrics | None = None,
) -> dict[str, list[float]]:
    """Train `model` (set up with `fabric.setup`) for `epochs`; return per-epoch metrics.

    The history maps `train/loss`, `val/loss`, `{stage}/{metric}` for each of the task's
    metrics (`train/acc`, `val/r2`, ...) and `time` to one value per epoch.
    `on_epoch_end(epoch, metrics)` runs after each epoch (print, log, checkpoint there).
    `start_epoch` continues a run restored from a checkpoint, `start_batch` (with the
    `train_metrics` accumulated so far) one written in the middle of that epoch.
    `on_step(epoch, batches)` runs after optimizer steps inside an epoch (a step checkpoint
    there). When `should_stop()` turns true, the epoch ends after the next optimizer step
    (not at an epoch's last batch) and `StopTraining` is raised; a NaN or infinite loss
    raises `NonFiniteLoss` at the end of the epoch. `train_loader` may come from
    `fabric.setup_dataloaders` only when `start_epoch` is 0 (see `set_epoch`); `fit` moves
    each batch to the device itself.
    """
    if start_epoch and is_wrapped(train_loader):
        raise LightfitError(
            f"fit(start_epoch={start_epoch}): pass the train DataLoader itself, not one from "
            "fabric.setup_dataloaders, which would shuffle as in epoch 0"
        )
    task = fabric.to_device(task)  # Fabric: instead of task.to(device) (loss weights, y statistics)
    if train_metrics is None:
        train_metrics = task.stage_metrics("train")
    train_metrics = train_metrics.to(fabric.device)
    val_metrics = task.stage_metrics("val").to(fabric.device)
    history: dict[str, list[float]] = {}
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        set_epoch(train_loader, epoch)
        first = start_batch if epoch == start_epoch else 0
        batches = train_epoch(
            fabric, model, optimizer, train_loader, task, train_metrics,
            accumulate_grad_batches, gradient_clip_val, limit_train_batches, should_stop,
            first, functools.partial(on_step, epoch) if on_step else None,
        )  # fmt: skip
        if batches < num_batches(train_loader, limit_train_batches):
            raise StopTraining(epoch, batches)
        train_metrics.check_finite(epoch)  # before anything is saved
        epoch_metrics = train_metrics.compute()
        train_metrics.reset()
        if val_loader is not None:
            val_batches = itertools.islice(val_loader, num_batches(val_loader, limit_val_batches))
            epoch_metrics |= evaluate_epoch(model, val_batches, task, val_metrics)
        if scheduler is not None:
            scheduler.step()  # once per epoch, like Lightning's interval="epoch"
        # .item(): one device-to-host copy per metric per epoch, for printing and logging.
        values = {k: v.item() for k, v in scalars(epoch_metrics).items()}
        values["time"] = time.perf_counter() - start
        for key, value in values.items():
            history.setdefault(key, []).append(value)
        if on_epoch_end is not None:
            on_epoch_end(epoch, values)
    return history


def checkpoint_state(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epoch: int,
    global_step: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A checkpoint in Lightning's layout, so evaluate/predict read all loops' checkpoints alike."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        # "net." as in the LightningModule, where the network is the attribute `net`.
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
        RNG_KEY: rng_states(),  # dropout draws from these: needed for an exact resume
        **extra,
    }


def restore_state(
    state: dict[str, Any], net: nn.Module, optimizer: Optimizer, scheduler: LRScheduler | None
) -> int:
    """Load a `checkpoint_state` (or a Lightning checkpoint) back; returns the epoch to start at."""
    net.load_state_dict(net_weights(state))
    optimizer.load_state_dict(state["optimizer_states"][0])
    if scheduler is not None and state["lr_schedulers"]:
        scheduler.load_state_dict(state["lr_schedulers"][0])
    if RNG_KEY in state:
        restore_rng_states(state[RNG_KEY])
    return state["epoch"] + 1
