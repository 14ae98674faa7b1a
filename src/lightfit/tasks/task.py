"""A task: the loss, the metrics, and what picks the best checkpoint.

The loops know nothing about classification or regression: they call `task.loss(outputs,
y)` and `task.stage_metrics(stage)`. The task is chosen in `conf/task/` (`task=regression`)
or, in the Keras-style API, by `fit(..., loss="mse", metrics=["mae"])`.

Regression networks end in a `TargetScale` layer (nets.py) and answer in the units of y.
The loss is taken on standardised values (`(v - mean) / std` of the training targets), so
the optimizer sees targets of unit scale: with mse, `val/loss` is then about 1 - R2.
Every metric is in the units of y.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightfit.errors import LightfitError
from lightfit.nets import TargetScale
from lightfit.tasks.metrics import (
    AVERAGES,
    CLASSIFICATION,
    METRICS,
    REGRESSION,
    StageMetrics,
    build_metric,
    check_metric,
    higher_is_better,
    match_targets,
    metric_name,
)

LOSSES: dict[str, dict[str, str]] = {
    CLASSIFICATION: {"cross_entropy": "torch.nn.CrossEntropyLoss"},
    REGRESSION: {
        "mse": "torch.nn.MSELoss",
        "mae": "torch.nn.L1Loss",
        "huber": "torch.nn.HuberLoss",
        "smooth_l1": "torch.nn.SmoothL1Loss",
    },
}
DEFAULTS = {  # what a task computes when it is not told: Keras' defaults and the usual pair
    CLASSIFICATION: {"loss": "cross_entropy", "metrics": ["acc"]},
    REGRESSION: {"loss": "mse", "metrics": ["mae", "rmse", "r2"]},
}
STAGES = ("train", "val", "test")
PREDICTIONS = {CLASSIFICATION: ("probs", "labels"), REGRESSION: ("values",)}  # lightfit.predict's kind=


def _check_name(name: str) -> None:
    if name not in LOSSES:
        raise LightfitError(f"task.name={name} is not one of {', '.join(LOSSES)}")


def build_loss(task: str, loss: Any) -> nn.Module:
    """A loss module from a name (mse, mae, huber, cross_entropy, ...) or a `_target_` mapping."""
    from hydra.utils import get_class, instantiate

    if isinstance(loss, str):
        if loss not in LOSSES[task]:
            raise LightfitError(
                f"task.loss={loss} is not a {task} loss; valid: {', '.join(LOSSES[task])} "
                "(or a mapping with _target_: a loss class)"
            )
        return get_class(LOSSES[task][loss])()
    if isinstance(loss, dict) and "_target_" in loss:
        try:
            return instantiate(loss)
        except Exception as exc:  # noqa: BLE001 - a wrong argument in the user's loss config
            raise LightfitError(f"task.loss: cannot build {loss['_target_']}: {exc}") from None
    if callable(loss):
        return loss
    raise LightfitError(f"task.loss={loss!r} is neither a loss name nor a _target_ mapping")


def mode_of(task: str, monitor: str, metrics: Sequence[Any], mode: str | None = None) -> str:
    """min or max for the monitored metric: `mode` if given, else the metric's own direction."""
    if mode is not None:
        if mode not in ("min", "max"):
            raise LightfitError(f"task.mode={mode} must be min or max")
        return mode
    stage, _, name = monitor.partition("/")
    names = {metric_name(m): m for m in metrics}
    if stage not in STAGES[:2] or not (name == "loss" or name in names):
        choices = ", ".join(f"{s}/{n}" for s in STAGES[:2] for n in ("loss", *names))
        raise LightfitError(f"monitor={monitor} is not a metric this run computes; choose one of {choices}")
    if name == "loss":
        return "min"
    better = higher_is_better(task, names[name])
    if better is None:
        raise LightfitError(f"monitor={monitor}: the metric has no direction; set task.mode=min or max")
    return "max" if better else "min"


class Task(nn.Module):
    """The loss and the metrics of a classification or regression problem.

    An nn.Module so that a loss with weights (`CrossEntropyLoss(weight=...)`) and the
    target statistics move to the device with the model. `targets` (regression): the
    network's `TargetScale`; its statistics are copied here for the loss.
    """

    def __init__(
        self,
        name: str = CLASSIFICATION,
        loss: Any = None,
        metrics: Sequence[Any] | None = None,
        num_outputs: int = 1,
        *,
        average: str = "macro",
        targets: TargetScale | None = None,
    ) -> None:
        super().__init__()
        _check_name(name)
        if average not in AVERAGES:
            raise LightfitError(f"task.average={average} is not one of {', '.join(AVERAGES)}")
        self.name, self.num_outputs, self.average = name, int(num_outputs), average
        self.metric_entries = list(DEFAULTS[name]["metrics"] if metrics is None else metrics)
        for entry in self.metric_entries:
            check_metric(name, entry)
        names = [metric_name(e) for e in self.metric_entries]
        if len(set(names)) != len(names):
            raise LightfitError(f"task.metrics names a metric twice: {names}")
        self.loss_fn = build_loss(name, DEFAULTS[name]["loss"] if loss is None else loss)
        self.scale = None
        if targets is not None:  # a copy: the network keeps its own layer (and checkpoints it)
            self.scale = TargetScale(targets.mean, targets.std, persistent=False)

    @property
    def is_regression(self) -> bool:
        return self.name == REGRESSION

    def loss(self, outputs: Tensor, y: Tensor) -> Tensor:
        outputs = match_targets(outputs, y)
        if self.scale is not None:  # the loss on standardised values: unit scale for the optimizer
            outputs, y = self.scale.standardize(outputs), self.scale.standardize(y)
        return self.loss_fn(outputs, y)

    def stage_metrics(self, stage: str) -> StageMetrics:
        """New, empty metrics for one stage: `{stage}/loss` and one entry per `task.metrics`."""
        metrics = {
            metric_name(e): build_metric(self.name, e, self.num_outputs, self.average)
            for e in self.metric_entries
        }
        return StageMetrics(stage, metrics, float64=self.is_regression).to_float64()

    def check_kind(self, kind: str) -> None:
        """One line for predictions this task cannot make (labels of a regression)."""
        if kind not in PREDICTIONS[self.name]:
            valid = ", ".join(PREDICTIONS[self.name])
            raise LightfitError(f"kind={kind}: a {self.name} checkpoint predicts {valid}")

    def predictions(self, outputs: Tensor, kind: str) -> Tensor:
        """What `lightfit.predict` writes: class probabilities or labels, or values in y's units."""
        if kind == "probs":
            return outputs.softmax(dim=1)
        if kind == "labels":
            return outputs.argmax(dim=1)
        return outputs


def build_task(cfg: Any, num_outputs: int, net: nn.Module | None = None) -> Task:
    """The Task for a `task` config node (conf/task/*.yaml); `net` brings the target statistics."""
    from omegaconf import DictConfig, OmegaConf

    from lightfit.nets import target_scale

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # plain lists and dicts for the metrics
    return Task(
        cfg["name"],
        cfg.get("loss"),
        cfg.get("metrics"),
        num_outputs,
        average=cfg.get("average", "macro"),
        targets=target_scale(net) if net is not None else None,
    )


def check_task_config(cfg: Any, monitor: str) -> str:
    """Everything about `task` that can be wrong, before any data are read; returns the mode."""
    task = build_task(cfg, num_outputs=1)
    return mode_of(task.name, monitor, task.metric_entries, cfg.get("mode"))


__all__ = ["CLASSIFICATION", "METRICS", "REGRESSION", "Task", "build_task", "check_task_config", "mode_of"]
