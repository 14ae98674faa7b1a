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

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.wrappers import is_wrapped
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader

from lightfit.errors import LightfitError
from lightfit.run.checkpoint import net_weights
from lightfit.run.hooks import FitHooks, StopTraining
from lightfit.run.resume import RNG_KEY, restore_rng_states, rng_states
from lightfit.run.schedule import monitored
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
    every rank's shard) comes in the same order. A loader from `fabric.setup_dataloaders`
    sets it again, from its own count of passes: that is why `fit` takes the train loader
    unwrapped when it resumes at a later epoch.
    """
    for obj in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def val_check_batches(interval: int | float | None, n: int, every_n_epoch: int | None) -> int:
    """Validate after every this many batches (Lightning's `val_check_interval`): by default
    at the end of each epoch of `n` batches; a float is a fraction of the epoch, an int a count
    (across epochs when `check_val_every_n_epoch` is None)."""
    if interval is None:
        return n
    if isinstance(interval, float):
        if not 0.0 < interval <= 1.0:
            raise LightfitError(
                f"trainer.val_check_interval={interval}: a fraction of the epoch (0 < x <= 1.0) "
                "or a number of batches (an int)"
            )
        return max(1, int(n * interval))
    if interval > n and every_n_epoch is not None:
        raise LightfitError(
            f"trainer.val_check_interval={interval} is more than the {n} batches of an epoch: "
            "add trainer.check_val_every_n_epoch=null to count batches across epochs"
        )
    return interval


def train_epoch(
    fabric: Fabric,
    model: nn.Module,
    optimizer: Optimizer,
    loader: DataLoader,
    task: Task,
    metrics: StageMetrics,
    *,
    n: int,
    start_batch: int = 0,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
) -> Iterator[tuple[int, bool]]:
    """Train on the first `n` batches of `loader` ((x, y) pairs), one at a time; after each,
    yield how many batches of the epoch are trained and whether the optimizer stepped. The
    caller decides what happens between batches (checkpoints, validation, stops) and may
    stop early.

    `start_batch`: the epoch resumes after that many batches, which the loader skips itself
    (`IndexBatchSampler(resume_at=...)`).
    """
    model.train()
    device = fabric.device  # Fabric: this process's device (cuda:RANK under DDP)
    non_blocking = device.type == "cuda"  # a copy from page-locked memory overlaps the GPU's work
    batches = itertools.islice(loader, n - start_batch)
    for batch_idx, (x, y) in enumerate(batches, start_batch):
        if isinstance(x, Tensor):  # moved by hand, no copy if already there: ~30 calls fewer a batch
            x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        else:  # Fabric moves any nest of tensors (a dict of inputs): instead of x.to(device)...
            x, y = fabric.to_device((x, y))
        step_now = (batch_idx + 1) % accumulate_grad_batches == 0 or batch_idx + 1 == n
        # Fabric: skip the DDP gradient all-reduce while accumulating (plain PyTorch: model.no_sync()).
        with nullcontext() if step_now else fabric.no_backward_sync(model):
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
        yield batch_idx + 1, step_now


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
    scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    hooks: FitHooks | None = None,
) -> dict[str, list[float]]:
    """Train `model` (set up with `fabric.setup`) for `epochs` (-1: until another limit);
    return per-epoch metrics.

    The history maps `train/loss`, `val/loss`, `{stage}/{metric}` for each of the task's
    metrics (`train/acc`, `val/r2`, ...), `time` and `batches` (trained in the epoch) to one
    value per epoch. `hooks` is where a run's machinery comes in (`FitHooks`: where to
    start, batch limits, step and time limits, when to validate, how the scheduler steps,
    `on_step`, `should_stop`, `on_validation`, `on_epoch_end`); without it this is a plain
    loop that validates and steps the scheduler once per epoch. The limits and the
    validation schedule are Lightning's: the run ends after the optimizer step that reaches
    `max_steps`, or after the first batch past `max_time` (once `min_epochs` are trained),
    and validates then; the epoch's last validation is in its metrics. When
    `hooks.should_stop()` turns true, the epoch ends after the next optimizer step (not at
    an epoch's last batch) and `StopTraining` is raised; a NaN or infinite loss raises
    `NonFiniteLoss` at the end of the epoch. `train_loader` may come from
    `fabric.setup_dataloaders` only when `hooks.start_epoch` is 0 (see `set_epoch`); `fit`
    moves each batch to the device itself.
    """
    hooks = hooks or NO_HOOKS
    if hooks.start_epoch and is_wrapped(train_loader):
        raise LightfitError(
            f"fit(hooks.start_epoch={hooks.start_epoch}): pass the train DataLoader itself, not one "
            "from fabric.setup_dataloaders, which would shuffle as in epoch 0"
        )
    task = fabric.to_device(task)  # Fabric: instead of task.to(device) (loss weights, y statistics)
    train_metrics = hooks.train_metrics if hooks.train_metrics is not None else task.stage_metrics("train")
    train_metrics = train_metrics.to(fabric.device)
    val_metrics = task.stage_metrics("val").to(fabric.device)
    k, n = accumulate_grad_batches, num_batches(train_loader, hooks.limit_train_batches)
    every_n_epoch = hooks.check_val_every_n_epoch
    val_every = val_check_batches(hooks.val_check_interval, n, every_n_epoch)
    # Lightning's lr_scheduler dict: step every `frequency` optimizer steps or epochs; a
    # ReduceLROnPlateau steps on the newest value of `monitor`.
    schedule = {"interval": "epoch", "frequency": 1, "monitor": None} | hooks.lr_scheduler
    plateau = isinstance(scheduler, ReduceLROnPlateau)
    step = hooks.start_epoch * math.ceil(n / k) + math.ceil(hooks.start_batch / k)  # optimizer steps
    latest: dict[str, float] = {}  # each metric's newest value (Lightning's callback_metrics)
    started, out_of_time = time.monotonic(), False
    history: dict[str, list[float]] = {}

    def may_stop(epochs_done: int) -> bool:  # Lightning's min_epochs and min_steps
        return epochs_done >= (hooks.min_epochs or 0) and step >= (hooks.min_steps or 0)

    epoch = hooks.start_epoch
    while (epochs < 0 or epoch < epochs) and not 0 <= hooks.max_steps <= step:
        start = time.perf_counter()
        set_epoch(train_loader, epoch)
        validates = val_loader is not None and (every_n_epoch is None or (epoch + 1) % every_n_epoch == 0)
        val_results: dict[str, Tensor] = {}  # the epoch's newest validation
        ended = False  # by max_steps or max_time, before the epoch's last batch
        first = hooks.start_batch if epoch == hooks.start_epoch else 0
        batches = first  # trained in this epoch so far
        for batches, stepped in train_epoch(
            fabric, model, optimizer, train_loader, task, train_metrics, n=n, start_batch=first,
            accumulate_grad_batches=k, gradient_clip_val=gradient_clip_val,
        ):  # fmt: skip
            if stepped:
                step += 1
                every = schedule["frequency"]
                if scheduler is not None and schedule["interval"] == "step" and batches % every == 0:
                    scheduler.step()  # e.g. OneCycleLR: every optimizer step
                if batches < n:
                    hooks.on_step(epoch, batches)  # a step checkpoint
                    if hooks.should_stop():  # a signal: the run saves and stops
                        raise StopTraining(epoch, batches)
            ended = 0 <= hooks.max_steps <= step
            if hooks.max_time is not None and not out_of_time:
                # rank 0's clock decides (Fabric: a broadcast), so that all ranks stop at the same batch
                out_of_time = fabric.broadcast(time.monotonic() - started >= hooks.max_time)
            if out_of_time:
                ended = ended or may_stop(epoch)
            position = batches if every_n_epoch is not None else epoch * n + batches
            if validates and (position % val_every == 0 or (out_of_time and may_stop(epoch))):
                val_batches = itertools.islice(val_loader, num_batches(val_loader, hooks.limit_val_batches))
                val_results = evaluate_epoch(model, val_batches, task, val_metrics)
                if batches < n and not ended:  # mid-epoch: the run logs it; an epoch's end, with its metrics
                    hooks.on_validation(epoch, batches, floats(val_results))
            if ended:
                break
        train_metrics.check_finite(epoch)  # before anything is saved
        epoch_metrics = train_metrics.compute() | val_results
        train_metrics.reset()
        values = floats(epoch_metrics)
        latest |= values
        epoch_step = schedule["interval"] == "epoch" and (epoch + 1) % schedule["frequency"] == 0
        if scheduler is not None and epoch_step and batches == n:
            # like Lightning's interval="epoch"; a ReduceLROnPlateau on its metric's newest value
            scheduler.step(monitored(latest, schedule["monitor"], epoch)) if plateau else scheduler.step()
        values |= {"time": time.perf_counter() - start, "batches": batches}
        for key, value in values.items():
            history.setdefault(key, []).append(value)
        hooks.on_epoch_end(epoch, values)
        epoch += 1
        if ended or (out_of_time and may_stop(epoch)):
            break
    return history


def floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    # .item(): one device-to-host copy per metric, for printing and logging.
    return {key: value.item() for key, value in scalars(metrics).items()}


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
