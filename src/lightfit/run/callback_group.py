"""The callbacks a config adds: `callbacks=[early_stopping,lr_monitor]`, or any Lightning callback.

Each file in conf/callbacks/ holds one callback under its own name (`early_stopping:`,
`lr_monitor:`, `swa:`), so a list of options composes into one node with a key per
callback, as the loggers do (run/loggers.py); one of your own goes in with
`+callbacks.<name>._target_=...`. The Lightning loops hand them all to the Trainer. The
explicit loop has no Trainer: it runs lightfit's `EarlyStopping` and `LearningRateMonitor`
itself (loops/run_explicit.py) and refuses any other callback in one line.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightfit.errors import LightfitError
from lightfit.run.context import built
from lightfit.run.early_stopping import EarlyStopping
from lightfit.run.lr_monitor import LearningRateMonitor
from lightfit.tasks import mode_of

EXPLICIT = (EarlyStopping, LearningRateMonitor)  # what the explicit loop runs itself
CALLBACKS_KEY = "callbacks"  # where a checkpoint keeps their states, {state_key: state}, as Lightning's do


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """The callbacks under `cfg.callbacks`, checked for the loop; an early stopping without
    `mode` gets its metric's direction (`task.mode` when it watches the run's `monitor`)."""
    from lightfit.tasks import build_task

    node = cfg.get("callbacks")
    nodes = OmegaConf.to_container(node, resolve=True) if node else {}
    explicit = cfg.loop.get("fit") is not None
    # as check_task_config reads them; the class weights need the data's class count: not here
    task = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if "weight" not in k}
    metrics = build_task(task, num_outputs=1).metric_entries
    callbacks = []

    def direction(name: str, monitor: str, mode: str | None) -> str:
        mode = mode or (cfg.task.mode if monitor == cfg.monitor else None)
        try:
            return mode_of(cfg.task.name, monitor, metrics, mode)
        except LightfitError as exc:  # "monitor=val/f1 is not a metric ...": say which key
            raise LightfitError(f"callbacks.{name}.{str(exc).removeprefix('task.')}") from None

    for name, spec in nodes.items():
        if not spec:
            continue
        if "mode" in spec and spec["mode"] is None and spec.get("monitor"):
            # `mode: null` (conf/callbacks/early_stopping.yaml) is the metric's own direction,
            # made explicit for any class: Lightning's EarlyStopping takes only min or max
            spec = {**spec, "mode": direction(name, spec["monitor"], None)}
        callback = built(f"callbacks.{name}", OmegaConf.create(spec), lambda spec=spec: instantiate(spec))
        if explicit and not isinstance(callback, EXPLICIT):
            raise LightfitError(
                f"callbacks.{name} ({spec['_target_']}) runs in "
                "loop=automatic and loop=manual (a Lightning Trainer); loop=explicit runs early_stopping "
                "and lr_monitor"
            )
        if isinstance(callback, EarlyStopping):
            callback.mode = direction(name, callback.monitor, callback.mode)
        callbacks.append(callback)
    return callbacks


def stopped_epoch(callbacks: list[Any]) -> dict[str, int | None]:
    """For results.json: the epoch (from 1) after which early stopping ended training, or None."""
    stoppers = [c for c in callbacks if isinstance(c, EarlyStopping)]
    if not stoppers:
        return {}
    epochs = [c.stopped_epoch for c in stoppers if c.stopped_epoch is not None]
    return {"stopped_epoch": min(epochs) + 1 if epochs else None}
