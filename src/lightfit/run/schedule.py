"""A learning-rate scheduler as Lightning users write one: what it is, how often it steps, on what.

A scheduler config (conf/scheduler/) names a torch scheduler by `_target_` (a partial,
called with the optimizer) and adds the keys of Lightning's lr_scheduler dict:
`interval` (step: after every optimizer step; epoch: after every epoch), `frequency` (every
that many) and `monitor` (what a ReduceLROnPlateau steps on; the run's monitor by default).
`Schedule` reads them off the node and builds the scheduler, so that the three loops step it
at the same moments: the automatic loop through that dict (`TaskModule.configure_optimizers`),
the manual loop by hand (manual.py), the explicit loop in `fit` (explicit.py).

A schedule over the whole run (OneCycleLR, warm-up then cosine) takes `total_steps: null`,
which lightfit fills in: the run's optimizer steps (or epochs, with `interval: epoch`),
from the train loader's length, the batch limit, accumulation, `max_epochs` and `max_steps`,
the same way in every loop. Not from `trainer.estimated_stepping_batches`: reading it in
`configure_optimizers` drops the train loader's resume state (Lightning #20550).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

from lightfit.errors import LightfitError

KEYS = ("interval", "frequency", "monitor")  # read by lightfit, not passed to the scheduler
TOTAL = "total_steps"  # null in the config: the run's length, filled in here


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int = 100,
    total_steps: int | None = None,
    start_factor: float = 0.01,
    eta_min: float = 0.0,
) -> SequentialLR:
    """A linear warm-up from `start_factor` x lr over `warmup_steps`, then a cosine down to
    `eta_min` at `total_steps`: torch's own LinearLR and CosineAnnealingLR, one after the other."""
    if total_steps is None or total_steps <= warmup_steps:
        shorter = f"scheduler.warmup_steps={max(1, (total_steps or 0) // 10)}"  # a tenth of the run
        raise LightfitError(
            f"scheduler.warmup_steps={warmup_steps} must be fewer than the run's {total_steps} steps: "
            f"{shorter}, or a longer run (trainer.max_epochs, trainer.max_steps)"
        )
    warmup = LinearLR(optimizer, start_factor=start_factor, total_iters=warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=eta_min)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def batches_per_epoch(loader_batches: int, trainer: Any) -> int:
    """The training batches of an epoch under the trainer's limits, as Lightning counts them
    (fast_dev_run, overfit_batches, limit_train_batches: a count or a fraction)."""
    limit = int(trainer.fast_dev_run) or trainer.overfit_batches or trainer.limit_train_batches
    if limit is None:
        return loader_batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(loader_batches * limit))
    return min(loader_batches, int(limit))


@dataclass
class Schedule:
    """A scheduler factory from the config, with how often it steps and on what."""

    make: Callable[..., LRScheduler | ReduceLROnPlateau]  # optimizer (, total_steps) -> scheduler
    target: Any = None  # what `make` builds: a scheduler class, or a function
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    fills_total: bool = False  # the config left total_steps to lightfit
    # what the run's length is made of (the trainer node and loop.accumulate_grad_batches)
    trainer: Any = None
    accumulate: int = 1

    @classmethod
    def from_config(cls, cfg: Any) -> Schedule | None:
        """The run's schedule (`cfg.scheduler`), or None; checked before any data are read."""
        from hydra.utils import get_object, instantiate
        from omegaconf import OmegaConf

        if not cfg.get("scheduler"):
            return None
        node = OmegaConf.to_container(cfg.scheduler, resolve=True)  # max_lr: ${optimizer.lr}
        settings = {key: node.pop(key) for key in KEYS if key in node}
        fills_total = TOTAL in node and node[TOTAL] is None
        if fills_total:
            del node[TOTAL]
        schedule = cls(
            make=instantiate(node, _partial_=True),
            target=get_object(node["_target_"]),
            trainer=cfg.trainer,
            accumulate=cfg.loop.accumulate_grad_batches,
            fills_total=fills_total,
            **settings,
        )
        if schedule.monitor is None:
            schedule.monitor = cfg.monitor
        if schedule.reduces_on_plateau:
            schedule.watch(cfg.task)
        return schedule.checked()

    def watch(self, task: Any) -> None:
        """A ReduceLROnPlateau: its monitor is a metric the run computes, and `mode: null` is
        that metric's own direction (max for val/acc)."""
        from lightfit.tasks import check_task_config

        try:
            mode = check_task_config(task, self.monitor)
        except LightfitError as exc:
            raise LightfitError(f"scheduler.{exc}") from None  # scheduler.monitor=val/f1 is not ...
        if self.make.keywords.get("mode") is None:
            self.make = functools.partial(self.make, mode=mode)

    def checked(self) -> Schedule:
        if self.interval not in ("step", "epoch"):
            raise LightfitError(f"scheduler.interval={self.interval}: step or epoch")
        if self.frequency < 1:
            raise LightfitError(f"scheduler.frequency={self.frequency} must be at least 1")
        if self.reduces_on_plateau and self.interval == "step":
            raise LightfitError(
                "scheduler.interval=step: ReduceLROnPlateau steps on a metric, which lightfit "
                "computes once an epoch: scheduler.interval=epoch"
            )
        every = self.trainer.check_val_every_n_epoch if self.trainer is not None else 1
        val_metric = self.reduces_on_plateau and str(self.monitor).startswith("val/")
        if val_metric and every is not None and self.frequency % every != 0:
            raise LightfitError(
                f"scheduler.frequency={self.frequency}: ReduceLROnPlateau steps on {self.monitor}, "
                f"which validation computes every {every} epochs (trainer.check_val_every_n_epoch): "
                f"scheduler.frequency={every}"
            )
        return self

    @property
    def reduces_on_plateau(self) -> bool:
        return isinstance(self.target, type) and issubclass(self.target, ReduceLROnPlateau)

    def total(self, loader_batches: int) -> int:
        """The run's length in the schedule's steps: optimizer steps, or epochs."""
        epochs = self.trainer.max_epochs if not self.trainer.fast_dev_run else 1
        if self.interval == "epoch":
            if epochs < 0:
                raise LightfitError(f"scheduler.{TOTAL}=null needs trainer.max_epochs (it is -1)")
            return epochs
        per_epoch = math.ceil(batches_per_epoch(loader_batches, self.trainer) / self.accumulate)
        steps = self.trainer.max_steps if not self.trainer.fast_dev_run else int(self.trainer.fast_dev_run)
        if epochs < 0 and steps < 0:
            raise LightfitError(f"scheduler.{TOTAL}=null needs trainer.max_epochs or trainer.max_steps")
        runs = [n for n in (epochs * per_epoch if epochs >= 0 else -1, steps) if n >= 0]
        return min(runs)

    def build(self, optimizer: Optimizer, loader_batches: int) -> LRScheduler | ReduceLROnPlateau:
        """The scheduler for `optimizer`; `loader_batches`: the train loader's length on this rank."""
        if self.fills_total:
            return self.make(optimizer, **{TOTAL: self.total(loader_batches)})
        return self.make(optimizer)

    def lightning(self, scheduler: Any) -> dict[str, Any]:
        """Lightning's lr_scheduler dict, for `configure_optimizers`."""
        return {"scheduler": scheduler, "interval": self.interval, "frequency": self.frequency} | (
            {"monitor": self.monitor} if self.reduces_on_plateau else {}
        )

    def settings(self) -> dict[str, Any]:
        """The same dict without the scheduler: `FitHooks.lr_scheduler` for the explicit loop."""
        return {"interval": self.interval, "frequency": self.frequency, "monitor": self.monitor}


def monitored(metrics: dict[str, float], monitor: str | None, epoch: int) -> float:
    """The value a ReduceLROnPlateau steps on; one line when there is none yet."""
    if monitor not in metrics:
        raise LightfitError(
            f"scheduler.monitor={monitor}: no value at epoch {epoch + 1} to step ReduceLROnPlateau on "
            f"(there are: {', '.join(sorted(metrics)) or 'none'}; validation runs every "
            "trainer.check_val_every_n_epoch epochs)"
        )
    return metrics[monitor]
