"""What Keras does at each epoch end of Keras-style `fit`: the History, the line of
verbose=1, and `EarlyStopping` with Keras' names and defaults (the decision is lightfit's
own, run/early_stopping.py, the one `lightfit train callbacks=early_stopping` makes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lightfit.errors import LightfitError
from lightfit.run import early_stopping
from lightfit.run.console import epoch_line
from lightfit.run.hooks import EarlyStop, FitHooks
from lightfit.tasks import Task, mode_of
from lightfit.tasks.task import metric_name


def keras_name(key: str) -> str:
    """`train/loss` -> `loss`, `val/mae` -> `val_mae`, `test/acc` -> `acc`: Keras' history names."""
    stage, name = key.split("/", 1)
    return f"val_{name}" if stage == "val" else name


@dataclass
class EarlyStopping:
    """Keras' `keras.callbacks.EarlyStopping` for `fit(..., callbacks=[...])`: its names and defaults.

    Training stops when `monitor` (a History name: `val_loss`, `val_acc`, `loss`) has not
    improved by more than `min_delta` for `patience` epochs; `mode` auto is the metric's own
    direction. `restore_best_weights`: at the stop, the model gets the weights of its best
    epoch back (as in Keras, only when it stopped early). The decision is the one
    `lightfit train` makes (`callbacks=early_stopping`, run/early_stopping.py).
    """

    monitor: str = "val_loss"
    min_delta: float = 0.0
    patience: int = 0
    mode: str = "auto"  # auto | min | max
    restore_best_weights: bool = False


class EpochEnd(FitHooks):
    """What Keras does at each epoch end: the History, the line of verbose=1, EarlyStopping."""

    def __init__(
        self, epochs: int, verbose: bool, model: nn.Module, stopping: EarlyStopping | None, task: Task
    ) -> None:
        super().__init__()
        self.epochs, self.verbose, self.model = epochs, verbose, model
        self.history: dict[str, list[float]] = {}  # fit() raises EarlyStop, so its own history is lost
        self.stopping, self.decision, self.best_weights = stopping, None, None
        if stopping is not None:
            name = stopping.monitor  # Keras' name: val_loss is val/loss, acc is train/acc
            monitor = f"val/{name[4:]}" if name.startswith("val_") else f"train/{name}"
            metrics = ("loss", *map(metric_name, task.metric_entries))
            if monitor.split("/", 1)[1] not in metrics:
                names = ", ".join(keras_name(f"{s}/{m}") for s in ("train", "val") for m in metrics)
                raise LightfitError(f'EarlyStopping(monitor="{name}"): fit computes {names}')
            if stopping.mode not in ("auto", "min", "max"):
                raise LightfitError(f'EarlyStopping(mode="{stopping.mode}"): auto, min or max')
            mode = mode_of(
                task.name, monitor, task.metric_entries, None if stopping.mode == "auto" else stopping.mode
            )
            self.decision = early_stopping.EarlyStopping(monitor, stopping.min_delta, stopping.patience, mode)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if "/" in key:
                self.history.setdefault(keras_name(key), []).append(value)
        stop = self.decision is not None and self.decision.update(metrics[self.decision.monitor], epoch)
        restore = self.stopping is not None and self.stopping.restore_best_weights
        if restore and self.decision.best_epoch == epoch:
            # clone: state_dict's tensors are the weights themselves, which the next step changes
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.verbose:
            note = (
                self.decision.reason().replace(self.decision.monitor, self.stopping.monitor) if stop else ""
            )
            print(epoch_line(epoch + 1, self.epochs, metrics, metrics["time"], note))
        if stop:
            if self.best_weights is not None:
                self.model.load_state_dict(self.best_weights)
            raise EarlyStop


def early_stopping_of(callbacks: list[Any], validates: bool) -> EarlyStopping | None:
    """The one EarlyStopping in `callbacks`; one line for anything else fit cannot run."""
    for callback in callbacks:
        if not isinstance(callback, EarlyStopping):
            raise LightfitError(
                f"callbacks=[{type(callback).__name__}(...)]: fit runs lightfit.EarlyStopping; "
                "train with `lightfit train callbacks=...` for Lightning callbacks"
            )
    if len(callbacks) > 1:
        raise LightfitError(f"callbacks: {len(callbacks)} EarlyStopping given; fit takes one")
    stopping = callbacks[0] if callbacks else None
    if stopping is not None and stopping.monitor.startswith("val_") and not validates:
        raise LightfitError(
            f'EarlyStopping(monitor="{stopping.monitor}") needs validation data: '
            "pass validation_split or validation_data"
        )
    return stopping
