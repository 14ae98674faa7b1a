"""What one training run is made of, and how the network and the task are built for it.

`Run` is what both loop runners take (loops/run_lightning.py, loops/run_explicit.py): the
composed config, the run directory, the data, the network, the task, the best score so
far, where to resume from, the stop request of a signal, the config's callbacks. Everything
a checkpoint needs to rebuild the network (`checkpoint_config`) is decided here once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightfit.errors import LightfitError
from lightfit.run.best import BestScore
from lightfit.run.resume import Resume
from lightfit.run.signals import StopRequest
from lightfit.tasks import Task

T = TypeVar("T")


@dataclass
class Run:
    cfg: DictConfig
    run_dir: Path
    datamodule: Any  # an ArrayDataModule, set up
    net: nn.Module
    task: Task
    best: BestScore
    resume: Resume
    stop: StopRequest
    callbacks: list[Any] = field(default_factory=list)  # the config's (run/callback_group.py)

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def checkpoint_config(cfg: DictConfig, datamodule: Any, task: Task | None = None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its network and its loss: the resolved config, the
    data's shapes, and the class weights the loss used (balanced ones come from the data)."""
    stored = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "input_shape": list(datamodule.input_shape),
        "num_outputs": int(datamodule.num_outputs),
        "task": cfg.task.name,
        "target_shape": None if datamodule.target_shape is None else list(datamodule.target_shape),
    }
    if datamodule.num_classes is not None:
        stored["num_classes"] = int(datamodule.num_classes)
    if task is not None and task.class_weight is not None:  # plain floats: torch.load(weights_only=True)
        stored["class_weight"] = task.class_weight.tolist()
    if (encoding := getattr(datamodule, "encoding", None)) is not None:
        stored["table"] = (
            encoding.to_dict()
        )  # a table's columns, categories, class names: predict reads raw rows
    if (images := getattr(datamodule, "image_format", None)) is not None:
        stored["images"] = images  # class names, size, channels: predict reads image files
    return stored


def built(group: str, node: Any, build: Callable[[], T]) -> T:
    """`build()`; a value torch rejects (`optimizer.lr=-1`) becomes one line naming the override."""
    try:
        return build()
    except LightfitError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        keys = [k for k, v in node.items() if not str(k).startswith("_") and str(v) in reason]
        where = f"{group}.{keys[0]}={node[keys[0]]}" if keys else f"the {group} config"
        raise LightfitError(f"{where}: {reason}") from None


def build_network_and_task(cfg: DictConfig, datamodule: Any) -> tuple[nn.Module, Task]:
    """The network for the data's shapes (with their statistics), and the task that trains it."""
    from hydra.utils import instantiate

    from lightfit.nets import TargetScale, build_network
    from lightfit.run.checkpoint import network_config
    from lightfit.run.schedule import Schedule
    from lightfit.tasks import build_task

    targets = None
    if datamodule.target_shape is not None:  # regression: the targets' statistics, in the network
        targets = TargetScale(*datamodule.target_stats)
    shapes = (datamodule.input_shape, datamodule.num_outputs, datamodule.mean, datamodule.std)
    node = network_config(cfg.model)
    net = built("model", cfg.model, lambda: build_network(instantiate(node), *shapes, targets))
    if cfg.model.get("compile"):
        # In place (nn.Module.compile): the forward is compiled, the module and its state_dict
        # keys stay as they are, so checkpoints keep plain names (no `_orig_mod.`) in every loop.
        net.compile()
    # Built once here only to check the values (lr, momentum, ...): the loops build their own.
    optimizer = built("optimizer", cfg.optimizer, lambda: instantiate(cfg.optimizer)(net.parameters()))
    if (schedule := Schedule.from_config(cfg)) is not None:
        batches = len(datamodule.train_dataloader())
        built("scheduler", cfg.scheduler, lambda: schedule.build(optimizer, batches))
    labels = None
    if cfg.task.get("class_weight") == "balanced":  # counted on the training split
        if not callable(getattr(datamodule, "train_labels", None)):
            raise LightfitError(
                f"task.class_weight=balanced: {type(datamodule).__name__} has no train_labels() "
                "to count the classes in; give the weights as a list (task.class_weight=[...])"
            )
        labels = datamodule.train_labels()
    return net, build_task(cfg.task, datamodule.num_outputs, net, labels)


def load_net_weights(net: nn.Module, path: str | Path) -> None:
    """Load a checkpoint's network weights (any loop's) into `net`; never unpickles code."""
    from lightfit.run.checkpoint import load_checkpoint, net_weights

    net.load_state_dict(net_weights(load_checkpoint(path)))
