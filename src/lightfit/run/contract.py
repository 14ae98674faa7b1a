"""What lightfit asks of a project's code, as `typing.Protocol`s, checked at start-up.

A run builds three things from the config by `_target_` and hands them to its machinery:
the LightningModule (`loop.module`, loop=automatic|manual), the fit function (`loop.fit`,
loop=explicit) and the data module (`data`). lightfit's own (`AutomaticLoop`, `ManualLoop`,
`loops.explicit.fit`, `ArrayDataModule`) go through the same check as a project's. What is
missing is one line naming the members and the class, before anything trains:

    loop.module (affair_risk.modules.Classifier) does not keep lightfit.contract.TrainingModule:
    no train_metrics
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from lightfit.errors import LightfitError


class TrainingModule(Protocol):
    """A LightningModule lightfit can train (`loop.module._target_`).

    Built as `Module(net=..., task=..., optimizer=..., scheduler=..., **its own keys)`
    (plus `accumulate_grad_batches`, `gradient_clip_val` if its signature takes them: then
    it does those itself, manual optimization). Its steps feed `<stage>_metrics.update(outputs,
    y, loss)`; lightfit's callback (run/callbacks.py) computes, logs and resets them once per
    epoch, and writes and restores everything a checkpoint holds. Under manual optimization
    with accumulation it keeps `accumulate_grad_batches` as an attribute (when to checkpoint).
    """

    net: Any  # the network (Standardize + model [+ TargetScale]): its weights are `net.*`
    task: Any  # lightfit.tasks.Task: the loss and the metrics
    train_metrics: Any  # task.stage_metrics("train"), and so on
    val_metrics: Any
    test_metrics: Any

    def training_step(self, batch: Any, batch_idx: int) -> Any: ...
    def validation_step(self, batch: Any, batch_idx: int) -> Any: ...
    def test_step(self, batch: Any, batch_idx: int) -> Any: ...
    def configure_optimizers(self) -> Any: ...


class FitLoop(Protocol):
    """A fit function lightfit can run (`loop.fit._target_`), as `lightfit.loops.explicit.fit`.

    Raises `lightfit.loops.StopTraining(epoch, batch)` when `hooks.should_stop()` ended an
    epoch early; returns the per-epoch history (`train/loss`, `val/acc`, ..., `time`).
    """

    def __call__(
        self,
        fabric: Any,
        model: Any,
        optimizer: Any,
        train_loader: Any,
        val_loader: Any = None,
        *,
        task: Any,
        epochs: int,
        scheduler: Any = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        hooks: Any = None,
    ) -> dict[str, list[float]]: ...


class DataModule(Protocol):
    """A data module lightfit can train on (`data._target_`), as `lightfit.data.ArrayDataModule`:
    shapes and statistics for the network, loaders, sharding, the resume position."""

    input_shape: tuple[int, ...]  # one sample's shape
    num_outputs: int  # the network's output width
    num_classes: int | None  # classification; None for regression
    target_shape: tuple[int, ...] | None  # regression: one target's shape; None for classification
    mean: Any  # the training inputs' statistics, for the network's Standardize layer
    std: Any

    def setup(self, stage: str | None = None) -> None: ...
    def train_dataloader(self) -> Any: ...
    def val_dataloader(self) -> Any: ...
    def test_dataloader(self) -> Any: ...
    def distribute(self, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> None: ...
    def resume_train_at(self, epoch: int, batches: int) -> None: ...


def members(protocol: type) -> list[str]:
    """The attributes and methods a protocol names, in the order it names them."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [name for name, value in vars(protocol).items() if inspect.isfunction(value) and name[0] != "_"]
    return names


def _has(obj: Any, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)  # a property is not run: no work, no error before setup
        return True
    except AttributeError:
        return hasattr(obj, name)  # nn.Module keeps submodules outside __dict__


def _missing_parameters(function: Callable[..., Any], protocol: type) -> list[str]:
    wanted = [p for p in inspect.signature(protocol.__call__).parameters if p != "self"]
    params = inspect.signature(function).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return []
    return [name for name in wanted if name not in params]


def check(obj: Any, protocol: type, what: str) -> None:
    """Raise one LightfitError naming what `obj` lacks of `protocol`; `what` says where it came from."""
    if "__call__" not in vars(protocol):
        missing = [name for name in members(protocol) if not _has(obj, name)]
    elif callable(obj):  # a function: the keyword arguments lightfit passes it
        missing = [f"parameter {name}" for name in _missing_parameters(obj, protocol)]
    else:
        missing = ["__call__ (it is not a function)"]
    if missing:
        target = getattr(obj, "func", obj)  # a functools.partial: the function it calls
        name = getattr(target, "__qualname__", type(target).__qualname__)
        module = getattr(target, "__module__", type(target).__module__)
        raise LightfitError(
            f"{what} ({module}.{name}) does not keep lightfit.contract.{protocol.__name__}: "
            f"no {', '.join(missing)}"
        )


# What lightfit's own fit reads off FitHooks beyond the loop of a plain fit: a project's fit
# (its loop.py) that does not read them would ignore these settings; they are refused instead.
OWN_FIT_ONLY = {"max_steps": -1, "min_epochs": None, "min_steps": None, "max_time": None,
                "val_check_interval": None, "check_val_every_n_epoch": 1}  # fmt: skip


def check_own_fit(fit: Any, cfg: Any, schedule: Any) -> None:
    """One line for a setting only lightfit's `fit` honours, given to another fit function."""
    function = getattr(fit, "func", fit)  # a partial of the fit function, from loop.fit
    if (function.__module__, function.__qualname__) == ("lightfit.loops.explicit", "fit"):
        return
    t = cfg.trainer
    chosen = [f"trainer.{key}={t.get(key)}" for key, default in OWN_FIT_ONLY.items() if t.get(key) != default]
    if schedule is not None and (schedule.interval != "epoch" or schedule.reduces_on_plateau):
        chosen.append(f"scheduler={cfg.scheduler._target_} (interval={schedule.interval})")
    if chosen:
        raise LightfitError(
            f"{chosen[0]}: loop.fit={cfg.loop.fit._target_} steps and validates once an epoch; "
            "lightfit's loop.fit (lightfit.loops.explicit.fit), loop=automatic and loop=manual take it"
        )
