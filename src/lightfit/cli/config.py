"""Typed config schemas, checked by Hydra while it composes, before anything is trained.

A typo (`trainer.max_epoch=3`), an unknown key or a wrong type (`seed=abc`,
`model.hidden=[a]`, `optimizer.lr=fast`) stops the run at composition with one line.
Defaults live in code: the schema of a network, data module, optimizer or scheduler is
read from its constructor's signature (names, type hints, defaults), so the YAML files
in conf/ only hold choices, and a new argument in code is a new key in the config.

`register()` stores the schemas in Hydra's ConfigStore as `schema/...`; the YAML files
extend them through their defaults lists. The trainer node's table is in trainer_schema.py.
"""

from __future__ import annotations
import __future__  # the compiler flag of `from __future__ import annotations`, for init_from_source

import ast
import collections.abc
import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

# The trainer node's table and its check, also importable from here (cli/train.py, tests).
from lightfit.cli.trainer_schema import EXPLICIT_KEYS, TrainerSchema, check_trainer  # noqa: F401

PRIMITIVES = (int, float, bool, str, Path)


def _omegaconf_type(hint: Any) -> Any:
    """The closest type OmegaConf can check: primitives, Optional/Union of them, lists; else Any."""
    if hint in PRIMITIVES:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        members = [_omegaconf_type(a) for a in args if a is not type(None)]
        members = [m for m in members if m is not Any]  # e.g. Union[float, Tensor] -> float
        if not members or any(typing.get_origin(m) is list for m in members):
            return Any  # OmegaConf checks no union of a container (ReduceLROnPlateau's min_lr)
        checked = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        return Optional[checked] if type(None) in args else checked  # noqa: UP045
    if origin in (list, tuple, collections.abc.Sequence) and args and args[0] in PRIMITIVES:
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            return Any  # a fixed-length tuple such as Adam's betas
        return list[args[0]]
    return Any


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return field(default=MISSING)
    if isinstance(value, (list, tuple)):
        return field(default_factory=lambda v=value: list(v))
    return field(default=value)


def schema_of(
    target: Any, *, partial: bool = False, skip: tuple[str, ...] = (), name: str | None = None
) -> type:
    """A dataclass for `target`'s keyword arguments (all but `skip`), typed from its hints.

    `name` is the `_target_` written into the config (defaults to the target's own path).
    `partial` schemas describe factories that the loop calls with the rest of the arguments
    (parameters for an optimizer, the sample shape for a network).
    """
    function = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(function)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, field(default=name or f"{target.__module__}.{target.__qualname__}"))
    ]
    if partial:
        fields.append(("_partial_", bool, field(default=True)))
    # Plain lists and dicts for the target, not OmegaConf containers: they end up in
    # optimizer states and checkpoints, which must load with torch.load(weights_only=True).
    fields.append(("_convert_", str, field(default="all")))
    for param in inspect.signature(target).parameters.values():
        if (
            param.name in skip
            or param.name == "self"
            or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ):
            continue
        fields.append((param.name, _omegaconf_type(hints.get(param.name, Any)), _default(param.default)))
    return make_dataclass(f"{getattr(target, '__name__', 'Target')}Schema", fields)


def model_schema(network: type) -> type:
    """A network's schema plus `compile`: true wraps it in torch.compile for training
    (run/context.py); the network's constructor never sees the key."""
    return make_dataclass(network.__name__, [("compile", bool, field(default=False))], bases=(network,))


def scheduler_schema(target: Any, interval: str, name: str | None = None) -> type:
    """A torch scheduler's schema (a partial, called with the optimizer) and the keys of
    Lightning's lr_scheduler dict, which lightfit reads off (run/schedule.py)."""
    base = schema_of(target, partial=True, skip=("optimizer",), name=name)
    return make_dataclass(
        base.__name__,
        [
            ("interval", str, field(default=interval)),  # step: every optimizer step; epoch: every epoch
            ("frequency", int, field(default=1)),  # every that many steps or epochs
            ("monitor", Optional[str], field(default=None)),  # noqa: UP045 - ReduceLROnPlateau; null: the run's monitor
        ],
        bases=(base,),
    )


@dataclass
class TaskSchema:
    """What is learned (conf/task/): the loss, the metrics, the metric that picks best.ckpt."""

    name: str = "classification"  # classification | regression
    loss: Any = None  # null: cross_entropy / mse; or mae, huber, ..., or {_target_: a loss class}
    metrics: Any = None  # names (acc, f1, r2, ...) or {_target_: a torchmetrics class}
    monitor: str = "val/loss"  # {train,val}/loss or {train,val}/<a metric above>
    mode: Optional[str] = None  # noqa: UP045 - min | max; null: the metric's own direction
    average: str = "macro"  # f1, precision, recall, auroc: macro | micro | weighted | binary (2 classes)
    # Each sample's loss times its class's weight: balanced (n_samples / (n_classes * count), on
    # the training split) or a list, one per class; pos_weight: class 1's, with two classes.
    class_weight: Any = None
    pos_weight: Optional[float] = None  # noqa: UP045


@dataclass
class LoopSchema:
    name: str = "automatic"  # automatic | manual | explicit, or a project's loop: a label in results.json
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None  # noqa: UP045
    # Lightning loops: {_target_: a LightningModule, its own constructor arguments}
    module: Any = None
    # the explicit loop: {_target_: a fit function, its own keyword arguments}
    fit: Any = None


@dataclass
class CheckpointSchema:
    # Also write checkpoints/last.ckpt every N optimizer steps inside an epoch (null: at epoch
    # ends only). A stop then costs at most N steps; resuming from it is exact.
    every_n_train_steps: Optional[int] = None  # noqa: UP045


@dataclass
class CVSchema:
    """k-fold cross-validation (run/cv.py): K runs in <run dir>/fold_1 ... fold_K, then cv.json."""

    folds: Optional[int] = None  # noqa: UP045 - K >= 2; null: one train/val split
    fold: Optional[int] = None  # noqa: UP045 - set by lightfit in each fold's own run: leave null


@dataclass
class TrainSchema:
    """The top level of conf/train.yaml; the groups bring their own schemas."""

    task: TaskSchema = field(default_factory=TaskSchema)
    data: Any = MISSING
    model: Any = MISSING
    loop: LoopSchema = field(default_factory=LoopSchema)
    optimizer: Any = MISSING
    scheduler: Any = None
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: Any = None
    callbacks: Any = None  # {name: {_target_: a Lightning callback, ...}}: conf/callbacks/
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)
    cv: CVSchema = field(default_factory=CVSchema)
    seed: int = 0
    # a checkpoint file, "last", or "auto" (newest, or fresh); conf/train.yaml: auto in a SLURM batch job
    ckpt_path: Optional[str] = None  # noqa: UP045
    # fine-tuning: a checkpoint whose network weights a fresh run starts from (run/finetune.py)
    init_from: Optional[str] = None  # noqa: UP045
    init_from_strict: bool = True  # false: load the tensors that match, list the others
    monitor: str = "${task.monitor}"  # kept at the top level too: monitor=val/acc still works
    optimized_metric: Optional[str] = None  # noqa: UP045 - what `train` returns to a sweeper; null: monitor


# counts that have no meaning below 1: Lightning would divide by them, or loop forever
AT_LEAST_ONE = ("loop.accumulate_grad_batches", "trainer.num_nodes", "trainer.check_val_every_n_epoch")


def check_counts(cfg: Any) -> None:
    """The counts the schemas type as int but cannot bound: one line naming the override."""
    from lightfit.errors import LightfitError

    for key in AT_LEAST_ONE:
        if (value := OmegaConf.select(cfg, key)) is not None and value < 1:
            raise LightfitError(f"{key}={value} must be at least 1")
    if (folds := cfg.cv.folds) is not None and folds < 2:
        raise LightfitError(f"cv.folds={folds}: need at least 2 folds (null: no cross-validation)")
    if (n := cfg.checkpoint.every_n_train_steps) is not None and n < 0:
        raise LightfitError(
            f"checkpoint.every_n_train_steps={n} must be a number of optimizer steps"
            " (null or 0: at epoch ends only)"
        )


def register() -> None:
    """Store every schema under `schema/` in Hydra's ConfigStore, and the resolvers (idempotent)."""
    import numpy as np
    import torch
    from torch.optim import lr_scheduler

    from lightfit import nets
    from lightfit.run import schedule

    # Read from the source: importing the data module would import Lightning (about 3 s).
    data_module = init_from_source("lightfit.data.datamodule", "ArrayDataModule", {"np": np})
    table_module = init_from_source("lightfit.data.table_module", "TableDataModule", {"Any": Any})
    image_module = init_from_source("lightfit.data.image_module", "ImageDataModule", {})

    arrays = ("x", "y", "x_test", "y_test", "task")  # task: from the task group, at run time
    bundled = (*arrays, "path", "labels")
    schemas = {
        "train": TrainSchema,
        "trainer": TrainerSchema,
        "loop": LoopSchema,
        "task": TaskSchema,
        "data/digits": schema_of(data_module, skip=bundled, name="lightfit.data.digits"),
        "data/diabetes": schema_of(
            data_module, skip=(*bundled, "num_classes"), name="lightfit.data.diabetes"
        ),
        "data/npz": schema_of(data_module, skip=arrays, name="lightfit.data.datamodule.ArrayDataModule"),
        "data/table": schema_of(
            table_module, skip=("task", "encoding"), name="lightfit.data.TableDataModule"
        ),
        "data/images": schema_of(
            image_module, skip=("task", "classes"), name="lightfit.data.ImageDataModule"
        ),
        # The public names (lightfit.nets.MLP), not the defining module's: checkpoints store them.
        "model/mlp": model_schema(
            schema_of(nets.MLP, partial=True, skip=("input_shape", "num_outputs"), name="lightfit.nets.MLP")
        ),
        "model/cnn": model_schema(
            schema_of(nets.CNN, partial=True, skip=("input_shape", "num_outputs"), name="lightfit.nets.CNN")
        ),
        "optimizer/adam": schema_of(torch.optim.Adam, partial=True, skip=("params",)),
        "optimizer/sgd": schema_of(torch.optim.SGD, partial=True, skip=("params",)),
        "scheduler/step": scheduler_schema(lr_scheduler.StepLR, "epoch"),
        "scheduler/cosine": scheduler_schema(lr_scheduler.CosineAnnealingLR, "epoch"),
        "scheduler/plateau": scheduler_schema(lr_scheduler.ReduceLROnPlateau, "epoch"),
        "scheduler/onecycle": scheduler_schema(lr_scheduler.OneCycleLR, "step"),
        "scheduler/warmup_cosine": scheduler_schema(schedule.warmup_cosine, "step"),
    }
    store = ConfigStore.instance()
    for path, node in schemas.items():
        group, _, name = f"schema/{path}".rpartition("/")
        store.store(group=group, name=name, node=node)
    _register_resolvers()


def init_from_source(module: str, cls: str, names: dict[str, Any]) -> Callable[..., None]:
    """A function with the signature of `cls.__init__` in `module`, read from the module's
    source without importing it, so that a typo in an override is answered before Lightning
    is imported. Only the `def` line runs (its defaults must be plain values); `names`
    resolve the type hints (`np.ndarray`).
    """
    source = importlib.util.find_spec(module).origin
    tree = ast.parse(Path(source).read_text(), source)
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    init = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    init.body, init.decorator_list = [ast.Pass()], []
    stub = ast.fix_missing_locations(ast.Module([init], []))
    code = compile(stub, source, "exec", __future__.annotations.compiler_flag)
    scope = dict(names)
    exec(code, scope)  # noqa: S102 - lightfit's own source, and only a signature of plain defaults
    return scope["__init__"]


def _register_resolvers() -> None:
    """The `${lightfit.<name>:}` resolvers that conf/ uses (idempotent)."""
    from lightfit.run import slurm

    # hydra.run.dir: outputs/slurm-<job id> in a SLURM batch job, so that a requeued job finds
    # its run again; else the time. Cached like Hydra's ${now:}: one value per composed config.
    OmegaConf.register_new_resolver("lightfit.run_name", slurm.run_name, use_cache=True, replace=True)
    # ckpt_path: auto in a SLURM batch job (a requeued job continues), else null
    OmegaConf.register_new_resolver("lightfit.default_ckpt_path", slurm.default_ckpt_path, replace=True)
    if not OmegaConf.has_resolver("lightfit.direction"):
        OmegaConf.register_new_resolver("lightfit.direction", _direction)


def _direction(*, _root_: Any) -> str:
    """`${lightfit.direction:}`: minimize or maximize, for a sweeper optimizing the monitor."""
    from lightfit.tasks import mode_of

    task = OmegaConf.to_container(_root_.task, resolve=True)
    metric = _root_.get("optimized_metric") or _root_.monitor
    metrics = task["metrics"] if task.get("metrics") is not None else _default_metrics(task["name"])
    mode = task.get("mode") if metric == _root_.monitor else None
    return "minimize" if mode_of(task["name"], metric, metrics, mode) == "min" else "maximize"


def _default_metrics(task: str) -> list[Any]:
    from lightfit.tasks.task import DEFAULTS

    return DEFAULTS[task]["metrics"]
