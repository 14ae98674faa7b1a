"""Keras-style `fit`, `evaluate`, `predict` for any `nn.Module` and NumPy arrays.

    from lightfit import fit, evaluate, predict
    history = fit(model, x_train, y_train, validation_split=0.1, epochs=5, batch_size=64)
    history.history["val_acc"]            # one float per epoch
    evaluate(model, x_test, y_test)        # {"loss": 0.21, "acc": 0.95}
    logits = predict(model, x_test)        # np.ndarray of the last layer's outputs, as Keras'

    # Keras' EarlyStopping, with its names and defaults
    history = fit(model, x, y, validation_split=0.1, epochs=50,
                  callbacks=[EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)])

    # regression: any loss and torchmetrics metric by name, as in Keras' compile()
    history = fit(model, x, y, loss="mse", metrics=["mae", "r2"])   # loss, mae, r2, val_loss, ...
    evaluate(model, x_test, y_test)        # {"loss": ..., "mae": ..., "r2": ...}: what fit was told
    evaluate(model, x_test, y_test, metrics=["rmse"])                # an argument given here wins

What `fit` was told (loss, metrics, task) is kept for the model, as Keras' `compile` keeps
it: `evaluate` uses it unless given its own. Errors name these Python arguments
(`loss="mse"`), not the command line's overrides (`task.loss=mse`).

Keras takes NumPy arrays and hides the conversions; PyTorch makes you write them. They
are all here, each with the reason it is there: `torch.from_numpy` in, `.detach()`,
`.cpu()`, `.numpy()` out, `.item()` for scalars, `no_grad` for evaluation. Training runs
the same explicit loop as `loop=explicit` (loops/explicit.py), not a copy of it.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.optim import Optimizer

from lightfit.api.keras_epochs import EarlyStopping, EpochEnd, early_stopping_of, keras_name
from lightfit.data.arrays import check_features, check_labels, check_targets, warn_integer_targets
from lightfit.data.batches import ArrayDataset, batch_loader
from lightfit.errors import LightfitError
from lightfit.loops.explicit import evaluate_epoch
from lightfit.loops.explicit import fit as fit_loop
from lightfit.run.hooks import EarlyStop
from lightfit.tasks import CLASSIFICATION, REGRESSION, Task, scalars
from lightfit.tasks.task import LOSSES
from lightfit.tasks.weights import keras_class_weights

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
# What fit() was given for a model (loss, metrics, task), as Keras' compile() keeps it on the
# model; weak keys: a model that is deleted takes its entry with it, and the model is not changed.
COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()
# The command line's names in the messages of tasks/ and data/, and the Python arguments they mean.
PYTHON_NAMES = (
    (r"use task=regression\b", 'pass loss="mse" (or another regression loss) or task="regression"'),
    (r"\btask\.(name|loss)=([A-Za-z_]\w*)", lambda m: f'{"task" if m[1] == "name" else "loss"}="{m[2]}"'),
    (r"\btask\.(loss|metrics|class_weight)\b", r"\1"),
    (r"\btask=(\w+)", r'task="\1"'),
    (r"\(or a mapping with _target_: a loss class\)", "(or a loss module, such as nn.HuberLoss())"),
    (r"; stopped before saving, so checkpoints/ still holds the last good epoch", ""),
    (r"\(try a lower optimizer\.lr or loop\.gradient_clip_val=1\.0\)", "(try a lower lr)"),
)


@dataclass
class History:
    """What Keras' `fit` returns: `history` maps metric names to one value per epoch."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)


def as_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """NumPy -> tensor. `torch.from_numpy` shares the array's memory: no copy.

    Only a different dtype costs a copy (float64 features become float32, the dtype of
    the weights); the tensor then no longer shares memory with the array.
    """
    if not array.flags.writeable or any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array).copy()  # from_numpy needs writable, positive strides
    return torch.from_numpy(array).to(dtype)  # .to() returns the same tensor if dtype matches


def _features(x: np.ndarray, name: str = "x") -> Tensor:
    x = np.asarray(x)
    check_features(name, x)  # one clear error for NaN, strings, empty arrays
    return as_tensor(x, torch.float32)


def _targets(task: Task, y: np.ndarray, n: int, name: str = "y") -> Tensor:
    """Class labels as int64, or regression targets as float32, checked (one line if wrong)."""
    y = np.asarray(y)
    if task.name == CLASSIFICATION:
        return as_tensor(check_labels(name, y, n, task.num_outputs), torch.int64)
    warn_integer_targets(name, y)
    targets = check_targets(name, y, n)
    width = 1 if targets.ndim == 1 else targets.shape[1]
    if width != task.num_outputs:
        raise LightfitError(
            f"{name} has {width} target(s) per sample (shape {targets.shape}) but the model "
            f"outputs {task.num_outputs} value(s) per sample"
        )
    return as_tensor(targets, torch.float32)


def _task(
    loss: Any,
    metrics: list[Any] | None,
    task: str | None,
    num_outputs: int,
    class_weight: list[float] | None = None,
) -> Task:
    """The task from Keras-style arguments: a regression loss name means regression; a loss
    not given is the task's default (cross_entropy, mse)."""
    if task is None:
        task = REGRESSION if isinstance(loss, str) and loss in LOSSES[REGRESSION] else CLASSIFICATION
    return Task(task, loss, metrics, num_outputs, class_weight=class_weight)


@contextmanager
def _python_arguments() -> Iterator[None]:
    """Errors from tasks/ and data/ name the Python arguments: `loss="mse"`, not `task.loss=mse`."""
    try:
        yield
    except LightfitError as exc:
        message = str(exc)
        for pattern, replacement in PYTHON_NAMES:
            message = re.sub(pattern, replacement, message)
        exc.args = (message,)  # the same exception (type, exit code), in Python's words
        raise


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(x: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size].to(device)  # slicing is a view; .to() copies to the GPU only


@torch.no_grad()  # no graph: predictions never need gradients
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for `x`, as a new NumPy array: what its last layer returns, as Keras'
    `model.predict`.

    A classifier trained with cross-entropy ends in logits (the loss applies log-softmax, as
    Keras' `from_logits=True`), so these are logits:
    `torch.softmax(torch.from_numpy(out), dim=1)` gives probabilities, `out.argmax(1)` the
    classes. A checkpoint's probabilities: `lightfit.load(path).predict_proba(x)`.
    """
    inputs = _features(x)
    model.eval()  # dropout off, batch norm uses running statistics
    outputs = [model(xb).detach().cpu() for xb in _batches(inputs, batch_size, _device(model))]
    # detach: cut the output from autograd (a no-op under no_grad, kept for readers who copy
    # this line elsewhere); cpu: bring it to host memory. torch.cat allocates a new tensor,
    # so the array below owns fresh memory and never aliases the model's weights or the
    # input, even for a model that returns its input; .numpy() then shares that memory.
    return torch.cat(outputs).numpy()


def _loader(x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int):
    return batch_loader(ArrayDataset(x, y, torch.arange(len(y))), batch_size, shuffle=shuffle, seed=seed)


def _num_outputs(model: nn.Module, x: Tensor) -> int:
    """The width of the model's output, from one sample (in eval mode, no graph)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        width = model(x[:1].to(_device(model))).shape[-1]
    model.train(was_training)
    return int(width)


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    *,
    loss: str | Any | None = None,
    metrics: list[Any] | None = None,
    task: str | None = None,
) -> dict[str, float]:
    """The mean loss and the metrics over `x`, `y`, as plain Python floats: {"loss": .., "acc": ..}.

    `loss`, `metrics` and `task` as in `fit`; each one not given here is what `fit` was
    given for this model, as Keras' `evaluate` uses what `compile` set (cross-entropy and
    accuracy for a model `fit` has not seen).
    """
    kept = COMPILED.get(model, {})
    loss, metrics, task = (
        given if given is not None else kept.get(name)
        for name, given in (("loss", loss), ("metrics", metrics), ("task", task))
    )
    with _python_arguments():
        inputs = _features(x)
        the_task = _task(loss, metrics, task, _num_outputs(model, inputs))
        targets = _targets(the_task, y, len(inputs))
    device = _device(model)
    the_task.to(device)
    stage = the_task.stage_metrics("test").to(device)
    batches = ((xb.to(device), yb.to(device)) for xb, yb in _loader(inputs, targets, batch_size, False, 0))
    results = scalars(evaluate_epoch(model, batches, the_task, stage))
    return {keras_name(key): value.item() for key, value in results.items()}  # .item(): tensor -> float


def _split(
    task: Task, inputs: Tensor, labels: Tensor, validation_data: Any, validation_split: float
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Training and validation tensors: `validation_data`, or the last `validation_split` of x, y."""
    if validation_data is not None:
        val_inputs = _features(validation_data[0], "validation x")
        return inputs, labels, val_inputs, _targets(task, validation_data[1], len(val_inputs), "validation y")
    if not validation_split:
        return inputs, labels, None, None
    if not 0 < validation_split < 1:
        raise LightfitError(f"validation_split={validation_split} must be between 0 and 1")
    cut = len(inputs) - int(len(inputs) * validation_split)
    # Slices of a tensor are views: the split costs no copy.
    return inputs[:cut], labels[:cut], inputs[cut:], labels[cut:]


def fit(  # long: Keras' signature, an argument a line, and what each means
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    validation_split: float = 0.0,
    epochs: int = 1,
    batch_size: int = 32,
    loss: str | Any | None = None,
    metrics: list[Any] | None = None,
    task: str | None = None,
    class_weight: dict[int, float] | str | None = None,
    optimizer: str | Callable[..., Optimizer] = "adam",
    lr: float = 1e-3,
    shuffle: bool = True,
    seed: int = 0,
    accelerator: str = "auto",
    precision: str = "32-true",
    verbose: bool = True,
    callbacks: list[EarlyStopping] | None = None,
) -> History:
    """Train `model` (any nn.Module) like Keras `fit`; returns the per-epoch History.

    `loss`: cross_entropy (class scores against integer labels, the default) or a
    regression loss (mse, mae, huber, smooth_l1), or any loss module. `metrics`: names
    (acc, f1, auroc, ... for classification; mae, rmse, r2, mape, ... for regression) or
    torchmetrics objects' configs (`{"_target_": ...}`); default acc for classification,
    mae, rmse and r2 for regression. `task`: classification or regression, when `loss` does
    not say. The model trains on y as given (no target scaling: that is build_network's
    TargetScale, in `lightfit train`).

    `validation_split` holds out the last fraction of `x`, `y` (before shuffling), as
    Keras does. `class_weight` (classification): `{class: weight}` as in Keras, or
    "balanced" (scikit-learn's, counted on the training part); each sample's loss is
    multiplied by its class's weight and the batch's mean is taken, as Keras does. The
    validation loss is weighted too (Keras' `val_loss` is not). `optimizer` is a name (adam,
    sgd, adamw) or a factory `params -> Optimizer`. `evaluate(model, ...)` later uses the
    same `loss`, `metrics` and `task`, without class weights (as Keras' `evaluate`).
    `callbacks`: an `EarlyStopping` (Keras' names), or none.
    """
    with _python_arguments():
        inputs = _features(x)
        the_task = _task(loss, metrics, task, _num_outputs(model, inputs))
        inputs, labels, val_inputs, val_labels = _split(
            the_task, inputs, _targets(the_task, y, len(inputs)), validation_data, validation_split
        )
        if class_weight is not None:
            if the_task.name != CLASSIFICATION:
                raise LightfitError(
                    f"class_weight weighs classes: it is for classification, not {the_task.name}"
                )
            weights = keras_class_weights(class_weight, labels, the_task.num_outputs)
            the_task = _task(loss, metrics, task, the_task.num_outputs, weights)
    COMPILED[model] = {"loss": loss, "metrics": metrics, "task": task}
    fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)
    make_optimizer = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    model, opt = fabric.setup(model, make_optimizer(model.parameters(), lr=lr))  # model moves to the device
    train_loader = fabric.setup_dataloaders(_loader(inputs, labels, batch_size, shuffle, seed))
    val_loader = None
    if val_inputs is not None:
        val_loader = fabric.setup_dataloaders(_loader(val_inputs, val_labels, batch_size, False, seed))

    stopping = early_stopping_of(callbacks or [], val_loader is not None)
    hooks = EpochEnd(epochs, verbose, model, stopping, the_task)
    # _python_arguments: a loss that turns NaN; EarlyStop: EarlyStopping ended training after an epoch
    with _python_arguments(), suppress(EarlyStop):
        fit_loop(fabric, model, opt, train_loader, val_loader, task=the_task, epochs=epochs, hooks=hooks)
    trained = len(hooks.history["loss"])
    return History(hooks.history, list(range(trained)))
