"""The trainer node: every `lightning.Trainer` argument a run may set, and which loop takes which.

`trainer.<key>=...` reaches the Trainer in the Lightning loops; the explicit loop (a plain
`fit()` with Fabric) honours only `EXPLICIT_KEYS` and `check_trainer` refuses the rest in one
line, so that nothing is ignored in silence. The table is plain code, not read from Trainer's
signature, so that a typo is answered while Hydra composes, before Lightning is imported (about
3 s); tests/test_trainer_args.py holds it to the installed Trainer's signature. config.py uses
it as the `trainer` field of the top-level schema and stores it as `schema/trainer`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union


@dataclass
class TrainerSchema:
    """Every argument of `lightning.Trainer` a run may set: `trainer.<key>=...` (a plain table,
    so that a typo is answered while composing, before Lightning is imported; a test holds it
    to Trainer's own signature). The Lightning loops pass the node to the Trainer; the explicit
    loop honours the keys in `EXPLICIT_KEYS` and refuses any other one set to a non-default
    value. The Trainer arguments lightfit sets itself are in `instead`: what to write instead."""

    instead: ClassVar[dict[str, str]] = {
        "logger": "a config group of its own: logger=csv|tensorboard|mlflow|wandb|none, or a list",
        "callbacks": "a config group of its own: callbacks=[early_stopping,lr_monitor] or "
        "+callbacks.<name>._target_=...",
        "plugins": "set by lightfit (background checkpoint writes, SLURM requeue)",
        "default_root_dir": "set by lightfit to the run dir: hydra.run.dir=<dir>",
        "enable_progress_bar": "set by lightfit: a bar on a terminal, one line per epoch otherwise",
        "enable_model_summary": "set by lightfit: the summary shows with the bar on a terminal",
        "enable_checkpointing": "set by lightfit, which writes checkpoints/best.ckpt and last.ckpt "
        "(checkpoint.every_n_train_steps=N: also every N steps)",
        "use_distributed_sampler": "set by lightfit: under DDP the data module shards itself",
        "barebones": "not with lightfit, whose callback writes checkpoints and logs metrics",
        "accumulate_grad_batches": "a loop setting, the same in every loop: loop.accumulate_grad_batches",
        "gradient_clip_val": "a loop setting, the same in every loop: loop.gradient_clip_val",
        "gradient_clip_algorithm": "not with lightfit: loop.gradient_clip_val clips the norm in every loop",
    }

    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"  # a count, "auto", or a list of device ids
    num_nodes: int = 1
    precision: str = "32-true"
    fast_dev_run: Union[bool, int] = False  # noqa: UP007
    max_epochs: int = 20  # -1: no limit (max_steps or max_time ends the run)
    min_epochs: Optional[int] = None  # noqa: UP045 - a time limit stops no run before these
    max_steps: int = -1  # optimizer steps; -1: no limit. Stops mid-epoch, whichever limit comes first
    min_steps: Optional[int] = None  # noqa: UP045
    max_time: Any = None  # "DD:HH:MM:SS" or {hours: 1, minutes: 30}: stop at the first step after it
    limit_train_batches: Optional[Union[int, float]] = None  # noqa: UP007, UP045 - int: batches, float: fraction
    limit_val_batches: Optional[Union[int, float]] = None  # noqa: UP007, UP045
    limit_test_batches: Optional[Union[int, float]] = None  # noqa: UP007, UP045
    limit_predict_batches: Optional[Union[int, float]] = None  # noqa: UP007, UP045
    overfit_batches: Union[int, float] = 0.0  # noqa: UP007
    val_check_interval: Optional[Union[int, float]] = None  # noqa: UP007, UP045 - float: of an epoch, int: batches
    check_val_every_n_epoch: Optional[int] = 1  # noqa: UP045 - null: val_check_interval counts across epochs
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 50
    deterministic: Any = False  # true, false or "warn"
    benchmark: Optional[bool] = None  # noqa: UP045
    inference_mode: bool = True
    profiler: Optional[str] = None  # noqa: UP045 - "simple" or "advanced"
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    enable_autolog_hparams: bool = True
    model_registry: Optional[str] = None  # noqa: UP045


# What the explicit loop (loops/run_explicit.py, explicit.py) does with the trainer node:
# devices, precision, limits, when to validate and when to stop. Any other key set to a
# non-default value is refused there in one line (`check_trainer`).
EXPLICIT_KEYS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "fast_dev_run",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time",
    "limit_train_batches", "limit_val_batches", "limit_test_batches",
    "val_check_interval", "check_val_every_n_epoch", "deterministic",
    "benchmark", "inference_mode",  # the explicit loop evaluates under torch.no_grad(): what false means
)  # fmt: skip


def check_trainer(cfg: Any) -> None:
    """The trainer node against the loop that runs it: the explicit loop takes `EXPLICIT_KEYS`;
    another key with a non-default value is one line naming it and the loops that take it."""
    from lightfit.errors import LightfitError
    from lightfit.run.hooks import max_time_seconds

    max_time_seconds(cfg.trainer.max_time)  # a malformed time: one line, in every loop
    for key in ("max_epochs", "max_steps"):  # 0: the test split's numbers of an untrained network
        if cfg.trainer[key] == 0:
            raise LightfitError(f"trainer.{key}=0 trains nothing: give 1 or more (-1: no limit)")
    for unit in ("epochs", "steps"):  # the maximum ends the run first: every loop ignored the minimum
        low, high = cfg.trainer[f"min_{unit}"], cfg.trainer[f"max_{unit}"]
        if low is not None and high is not None and 0 <= high < low:
            raise LightfitError(
                f"trainer.min_{unit}={low} is more than trainer.max_{unit}={high}, which ends the "
                f"run first: trainer.max_{unit}={low}, or a smaller trainer.min_{unit}"
            )
    defaults = {f.name: f.default for f in dataclasses.fields(TrainerSchema)}
    set_keys = {k: v for k, v in cfg.trainer.items() if k in defaults and v != defaults[k]}
    if cfg.loop.get("fit") is None:  # a Lightning loop: the installed Trainer's own signature
        for key, value in set_keys.items():
            if key not in trainer_parameters():
                from importlib.metadata import version

                raise LightfitError(
                    f"trainer.{key}={value}: the installed lightning {version('lightning')} "
                    f"has no Trainer argument '{key}' (a newer lightning has)"
                )
        return
    for key, value in set_keys.items():
        if key not in EXPLICIT_KEYS:
            raise LightfitError(
                f"trainer.{key}={value}: loop={cfg.loop.name} does not take it "
                f"(loop=automatic and loop=manual do; default: {defaults[key]})"
            )


def trainer_parameters() -> list[str]:
    """The arguments of the installed `lightning.Trainer` (imports Lightning)."""
    import lightning

    return list(inspect.signature(lightning.Trainer).parameters)
