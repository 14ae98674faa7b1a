"""Where a run's machinery enters a plain `fit()` loop: one small object, not a dozen parameters.

A fit loop (`lightfit.loops.explicit.fit`, or a project's own) takes `hooks: FitHooks`. The
defaults do nothing: `fit(..., hooks=None)` is a plain loop from the first epoch. A run
(loops/run_explicit.py) passes a subclass that resumes mid-epoch, writes step and epoch
checkpoints, prints the epoch line and asks whether a signal asked to stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lightfit.errors import LightfitError


class StopTraining(Exception):
    """`fit` stopped because `hooks.should_stop()` said so (a signal); `epoch`, `batch` say where."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__(f"epoch {epoch + 1}, batch {batch}")
        self.epoch, self.batch = epoch, batch


class EarlyStop(Exception):
    """Raised by `hooks.on_epoch_end` to end training after that epoch (early stopping). An
    exception, so that any fit loop that calls `on_epoch_end` stops, a project's own too; the
    run that passed the hooks catches it."""


@dataclass
class FitHooks:
    """Where `fit` starts, what it has so far, when it validates and stops, and four calls
    into the run's machinery.

    `start_epoch` (0-based) continues a run restored from a checkpoint, `start_batch` (with
    the `train_metrics` accumulated so far) one written in the middle of that epoch.
    `limit_*_batches`: all batches (None), a count, or a fraction, as Lightning's Trainer;
    so are the limits and the validation schedule below.
    """

    start_epoch: int = 0
    start_batch: int = 0
    train_metrics: Any = None  # StageMetrics of the epoch so far; None: the task's, empty
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    # When to stop and when to validate: Lightning's Trainer arguments of the same names.
    max_steps: int = -1  # optimizer steps; -1: no limit
    min_epochs: int | None = None  # a time limit stops no run before these
    min_steps: int | None = None
    max_time: float | None = None  # seconds: stop after the first batch past them
    val_check_interval: int | float | None = None  # a fraction of the epoch, or every N batches
    check_val_every_n_epoch: int | None = 1  # None: val_check_interval counts across epochs
    # How often the scheduler steps, and on what: Lightning's lr_scheduler dict (run/schedule.py)
    lr_scheduler: dict[str, Any] = field(default_factory=dict)

    def on_step(self, epoch: int, batches: int) -> None:
        """After an optimizer step inside an epoch, `batches` trained in it (a step checkpoint)."""

    def should_stop(self) -> bool:
        """Asked after each optimizer step inside an epoch: True ends it and raises `StopTraining`."""
        return False

    def on_validation(self, epoch: int, batches: int, metrics: dict[str, float]) -> None:
        """After a validation inside an epoch (`val_check_interval`), `batches` trained in it."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch, its metrics (`train/loss`, `val/acc`, ..., `time`): log, checkpoint.
        May raise `EarlyStop`: this was the last epoch."""


def max_time_seconds(max_time: Any) -> float | None:
    """`trainer.max_time` in seconds, from Lightning's forms: "DD:HH:MM:SS" or {hours: 1, ...}."""
    if max_time is None:
        return None
    try:
        if isinstance(max_time, str):
            days, hours, minutes, seconds = (int(part) for part in max_time.split(":"))
            max_time = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
        if isinstance(max_time, Mapping):
            return timedelta(**max_time).total_seconds()
    except (ValueError, TypeError):
        pass
    raise LightfitError(
        f"trainer.max_time={max_time}: DD:HH:MM:SS (00:01:30:00) or a dict such as {{hours: 1, minutes: 30}}"
    )
