"""The learning rate of each epoch, as a metric: in metrics.csv, the loggers and the epoch line.

`LearningRateMonitor` (a Lightning callback; `callbacks=lr_monitor`) records each parameter
group's learning rate when an epoch starts, and adds it to that epoch's metrics as
`train/lr` (`train/lr_0`, `train/lr_1`, ... with several groups). The epoch's start, not
its end: an epoch scheduler has stepped by the end (the manual and automatic loops at its
last batch, a ReduceLROnPlateau in `on_train_epoch_end`; the explicit loop before its
epoch end), and the rate the epoch trained with is the one it started with. Lightning's own
`LearningRateMonitor` logs `lr-Adam` to the loggers only, under its own step, and cannot run
in the explicit loop; this one is a metric of the epoch in all three loops. The recorded
rates travel in a checkpoint made inside an epoch, so an epoch resumed in its middle logs
the rate it started with.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.optim import Optimizer

from lightfit.run.batch_hooks import only_batch_hooks_it_has


@only_batch_hooks_it_has  # no per-batch hook: Lightning calls none
class LearningRateMonitor(Callback):
    def __init__(self) -> None:
        self.rates: list[float] | None = None  # this epoch's, from its start; None between epochs

    def epoch_start(self, optimizers: list[Optimizer]) -> None:
        """Record the rates, unless a checkpoint made inside this epoch brought them back."""
        if self.rates is None:
            self.rates = [float(group["lr"]) for opt in optimizers for group in opt.param_groups]

    def epoch_end(self) -> dict[str, float]:
        """The epoch's rates as metrics, `train/lr` or `train/lr_<group>`; the next epoch records its own."""
        rates, self.rates = self.rates or [], None
        if len(rates) == 1:
            return {"train/lr": rates[0]}
        return {f"train/lr_{i}": rate for i, rate in enumerate(rates)}

    def state_dict(self) -> dict[str, Any]:
        return {"rates": self.rates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rates = state_dict["rates"]

    # The Lightning side. An epoch resumed in its middle keeps the rates its checkpoint held.
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_start(trainer.optimizers)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Logged like the stage metrics: once, for the epoch (RunCallback prints them in the epoch
        # line). As float64 tensors: a float would be logged as float32, 0.0010000000474974513.
        rates = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.epoch_end().items()}
        pl_module.log_dict(rates, on_step=False, on_epoch=True)
