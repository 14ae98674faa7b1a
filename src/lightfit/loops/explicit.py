"""The explicit loop: a plain PyTorch `fit()` you can keep across projects.

Forward, loss, backward, step, in the order you would write them by hand. Lightning
Fabric handles only devices and processes, so the same function runs on CPU, one GPU
and DDP; each line where Fabric replaces plain PyTorch says so in a comment. Compare with
`automatic.py` (Lightning writes all of this) and `manual.py` (you write it inside
Lightning): with the same seed all three end with the same weights.

    fabric = Fabric(accelerator="cpu")
    model, optimizer = fabric.setup(net, optimizer)       # instead of net.to(device)
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)
    task = Task("classification", num_outputs=10)            # the loss and the metrics
    history = fit(fabric, model, optimizer, train_loader, val_loader, epochs=5, task=task)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from lightfit.run.checkpoint import net_weights
from lightfit.run.hooks import FitHooks, StopTraining
from lightfit.run.resume import RNG_KEY, restore_rng_states, rng_states
from lightfit.tasks import StageMetrics, Task, scalars

NO_HOOKS = FitHooks()  # a plain loop: from the first epoch, all batches, nothing called


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
    every rank's shard) comes in the same order.
    """
    if hasattr(loader, "_num_iter_calls"):
        # Fabric's loader sets the sampler's epoch itself, to the number of times it has been
        # iterated; a run resumed at epoch 5 must not replay the order of epoch 0. (A private
        # attribute: the resume tests fail loudly if Lightning renames it.)
        loader._num_iter_calls = epoch
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
    *,
    epoch: int = 0,
    start_batch: int = 0,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    hooks: FitHooks = NO_HOOKS,
) -> int:
    """One pass over `loader`; returns the number of batches trained (fewer if stopped).

    `start_batch`: the epoch resumes after that many batches, which the loader skips itself
    (`IndexBatchSampler(resume_at=...)`). `hooks.on_step` and `hooks.should_stop` are called
    only right after an optimizer step and before the last batch: a checkpoint or a stop
    there loses no accumulated gradients and resumes exactly.
    """
    model.train()
    n = num_batches(loader, hooks.limit_train_batches)
    batch_idx = start_batch - 1
    batches = itertools.islice(loader, n - start_batch)
    for batch_idx, (x, y) in enumerate(batches, start_batch):  # Fabric moved x, y to the device
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
                hooks.on_step(epoch, batch_idx + 1)  # a step checkpoint
                if hooks.should_stop():
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
    task: Task,
    epochs: int,
    scheduler: LRScheduler | None = None,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    hooks: FitHooks | None = None,
) -> dict[str, list[float]]:
    """Train `model` (set up with `fabric.setup`) for `epochs`; return per-epoch metrics.

    The history maps `train/loss`, `val/loss`, `{stage}/{metric}` for each of the task's
    metrics (`train/acc`, `val/r2`, ...) and `time` to one value per epoch. `hooks` is where
    a run's machinery comes in (`FitHooks`: where to start, batch limits, `on_step`,
    `should_stop`, `on_epoch_end`); without it this is a plain loop. When
    `hooks.should_stop()` turns true, the epoch ends after the next optimizer step (not at
    an epoch's last batch) and `StopTraining` is raised; a NaN or infinite loss raises
    `NonFiniteLoss` at the end of the epoch.
    """
    hooks = hooks or NO_HOOKS
    task = fabric.to_device(task)  # Fabric: instead of task.to(device) (loss weights, y statistics)
    train_metrics = hooks.train_metrics if hooks.train_metrics is not None else task.stage_metrics("train")
    train_metrics = train_metrics.to(fabric.device)
    val_metrics = task.stage_metrics("val").to(fabric.device)
    history: dict[str, list[float]] = {}
    for epoch in range(hooks.start_epoch, epochs):
        start = time.perf_counter()
        set_epoch(train_loader, epoch)
        batches = train_epoch(
            fabric,
            model,
            optimizer,
            train_loader,
            task,
            train_metrics,
            epoch=epoch,
            start_batch=hooks.start_batch if epoch == hooks.start_epoch else 0,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            hooks=hooks,
        )
        if batches < num_batches(train_loader, hooks.limit_train_batches):
            raise StopTraining(epoch, batches)
        train_metrics.check_finite(epoch)  # before anything is saved
        epoch_metrics = train_metrics.compute()
        train_metrics.reset()
        if val_loader is not None:
            val_batches = itertools.islice(val_loader, num_batches(val_loader, hooks.limit_val_batches))
            epoch_metrics |= evaluate_epoch(model, val_batches, task, val_metrics)
        if scheduler is not None:
            scheduler.step()  # once per epoch, like Lightning's interval="epoch"
        # .item(): one device-to-host copy per metric per epoch, for printing and logging.
        values = {k: v.item() for k, v in scalars(epoch_metrics).items()}
        values["time"] = time.perf_counter() - start
        for key, value in values.items():
            history.setdefault(key, []).append(value)
        hooks.on_epoch_end(epoch, values)
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
