"""Where a run's machinery enters a plain `fit()` loop: one small object, not a dozen parameters.

A fit loop (`lightfit.loops.explicit.fit`, or a project's own) takes `hooks: FitHooks`. The
defaults do nothing: `fit(..., hooks=None)` is a plain loop from the first epoch. A run
(loops/run_explicit.py) passes a subclass that resumes mid-epoch, writes step and epoch
checkpoints, prints the epoch line and asks whether a signal asked to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    """Where `fit` starts, what it has so far, and three calls into the run's machinery.

    `start_epoch` (0-based) continues a run restored from a checkpoint, `start_batch` (with
    the `train_metrics` accumulated so far) one written in the middle of that epoch.
    `limit_*_batches`: all batches (None), a count, or a fraction, as Lightning's Trainer.
    """

    start_epoch: int = 0
    start_batch: int = 0
    train_metrics: Any = None  # StageMetrics of the epoch so far; None: the task's, empty
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None

    def on_step(self, epoch: int, batches: int) -> None:
        """After an optimizer step inside an epoch, `batches` trained in it (a step checkpoint)."""

    def should_stop(self) -> bool:
        """Asked after each optimizer step inside an epoch: True ends it and raises `StopTraining`."""
        return False

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch, its metrics (`train/loss`, `val/acc`, ..., `time`): log, checkpoint.
        May raise `EarlyStop`: this was the last epoch."""
