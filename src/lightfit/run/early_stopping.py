"""Early stopping: one decision, taken the same way by all three loops.

`EarlyStopping` is a Lightning callback with the names of Lightning's own
(`lightning.pytorch.callbacks.EarlyStopping`): `monitor`, `min_delta`, `patience`, `mode`.
The decision itself is `update(value, epoch)`, plain code on a float: the Lightning loops
call it from `on_train_epoch_end` with the epoch's folded metric, the explicit loop
(loops/run_explicit.py) and Keras-style `fit` from their epoch end with the same float, so
all of them stop at the same epoch. Its state (best, wait, stopped epoch) travels in every
checkpoint under `callbacks`, as Lightning stores a callback's state, so a resumed run stops
where an uninterrupted one would.

Under DDP every rank takes the decision itself, on the same number: the epoch's metrics are
summed across ranks before the division (StageMetrics.compute), so all ranks stop after the
same epoch, and none is left waiting in the next epoch's all-reduce (tests/test_ddp_callbacks.py).
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import Callback

from lightfit.run.batch_hooks import only_batch_hooks_it_has

STATE = ("best", "best_epoch", "wait", "stopped_epoch")  # what a checkpoint keeps


@only_batch_hooks_it_has  # no per-batch hook: Lightning calls none
class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    An epoch improves when its value beats the best so far by more than `min_delta`
    (Lightning's rule); a NaN never improves. `mode`: min or max; None takes the metric's
    own direction (the task's, as for best.ckpt), set by the run before training.
    """

    def __init__(
        self, monitor: str = "val/loss", min_delta: float = 0.0, patience: int = 3, mode: str | None = None
    ) -> None:
        self.monitor, self.min_delta, self.patience, self.mode = monitor, abs(min_delta), patience, mode
        self.best: float | None = None
        self.best_epoch: int | None = None  # 0-based, as the loops count
        self.wait = 0  # epochs since the last improvement
        self.stopped_epoch: int | None = None  # 0-based: the epoch after which training stopped
        self.fresh = False  # Lightning loops: validation ran this epoch (val/ metrics are this epoch's)

    @property
    def state_key(self) -> str:
        return f"EarlyStopping[{self.monitor}]"  # two of them, on two metrics, keep two states

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        d = self.min_delta
        return value + d < self.best if self.mode == "min" else value - d > self.best

    def update(self, value: float, epoch: int) -> bool:
        """Record the epoch's `value`; True when training should stop after this epoch."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        self.stopped_epoch = epoch
        return True

    def reason(self) -> str:
        """What the epoch line says at the stop."""
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        epochs = "epoch" if self.wait == 1 else "epochs"
        best = f"best {self.best:.4f} in epoch {self.best_epoch + 1}" if self.best is not None else "no best"
        return f"early stop: {self.monitor} did not improve{by} in {self.wait} {epochs} ({best})"

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in STATE:
            setattr(self, key, state_dict[key])

    # The Lightning side: the same `update`, on the epoch's metric from callback_metrics.
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.stopped_epoch is not None:  # resumed after the stop: nothing left to train
            trainer.should_stop = True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.fresh = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        fresh, self.fresh = self.fresh, False
        if self.monitor.startswith("val/") and not fresh:
            return  # no validation this epoch: the value is an older epoch's
        # float(): the same Python float the explicit loop's .item() gives
        if self.update(float(trainer.callback_metrics[self.monitor]), trainer.current_epoch):
            trainer.should_stop = True
