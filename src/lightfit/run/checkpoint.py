"""Read a lightfit checkpoint safely and rebuild its network from it alone.

A checkpoint is a pickle, and unpickling can run any code. `torch.load(weights_only=True)`
only rebuilds tensors and plain containers, so a file that carries pickled Python objects is
refused, not run. The network is then rebuilt from what the training run stored under
`checkpoint["lightfit"]`: the resolved config, the shape of one sample, the output width
and, for regression, the targets' shape.
Its configs name what to call (`_target_`); calling that is code execution too, so only
networks, data modules and the functions of lightfit and of the project whose command runs
(`affair_risk evaluate`: the package of its config module) are accepted there.
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightfit.errors import LightfitError

# Written into every checkpoint by both runners (run/callbacks.py, loops/run_explicit.py).
CHECKPOINT_KEY = "lightfit"
NET_PREFIX = "net."  # the TaskModule keeps the network (Standardize + model) as `self.net`
M = TypeVar("M", bound=nn.Module)
MODEL_KEYS = ("compile",)  # the model node's keys that lightfit reads, not the network's constructor
COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before the network's keys
PACKAGE = __name__.split(".")[0]  # "lightfit", or whatever a copy of the template renames it to
# Functions that only build a tensor from the numbers given them (a loss's `weight`): safe to call.
TENSOR_BUILDERS = ("torch.tensor", "torch.as_tensor")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict of tensors and plain values, or one clear LightfitError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LightfitError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(exc), re.I)
        if blocked:
            raise LightfitError(
                f"{path} was refused: it is not a plain weights file (it would run pickled Python code: "
                f"{blocked.group(1)}); lightfit loads checkpoints with torch.load(weights_only=True)"
            ) from None
        raise LightfitError(f"{path} is not a PyTorch checkpoint (torch.load cannot read it)") from None
    except (RuntimeError, EOFError, KeyError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LightfitError(f"{path} is not a PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise LightfitError(f"{path} is not a Lightning checkpoint (no 'state_dict' in it)")
    if CHECKPOINT_KEY not in checkpoint:
        raise LightfitError(
            f"{path} is not a lightfit checkpoint (no '{CHECKPOINT_KEY}' entry to rebuild the network from)"
        )
    return checkpoint


def own_packages() -> set[str]:
    """lightfit, and the packages whose configs the running command composes: a project's
    command (`affair_risk evaluate`, config module `affair_risk.conf`) adds `affair_risk`."""
    from hydra.core.hydra_config import HydraConfig

    found = {PACKAGE}
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.schema == "pkg" and source.provider != "hydra":  # not Hydra's own configs
                found.add(source.path.replace("/", ".").split(".")[0])
    return found - {"hydra", "hydra_plugins"}


def _allowed_target(target: str) -> bool:
    """A class or function of lightfit or of the project whose command runs, an nn.Module,
    or a LightningDataModule; never any other callable (`os.system`)."""
    from hydra.utils import get_object

    if target in TENSOR_BUILDERS:
        return True
    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 - not importable: refused below with the name
        return False
    if getattr(obj, "__module__", "").split(".")[0] in own_packages() and callable(obj):
        return True
    if not isinstance(obj, type):
        return False
    if issubclass(obj, nn.Module):
        return True
    import lightning as L  # only for a data module from elsewhere; imports are slow

    return issubclass(obj, L.LightningDataModule)


def check_targets(node: Any, where: str) -> None:
    """Refuse a config from a checkpoint whose `_target_`s would call anything but a network or data.

    `instantiate` calls whatever `_target_` names (`os.system` too), so a config read from a
    file someone sent you is as dangerous as a pickle.
    """
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not _allowed_target(str(target)):
            raise LightfitError(
                f"{where}: _target_ {target!r} is not a network, a data module or part of "
                f"{' or '.join(sorted(own_packages()))}; "
                "refusing to call it"
            )
        for key, value in node.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for value in node:
            check_targets(value, where)


def net_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights from a checkpoint of any loop, keys as `net.state_dict()` has them.

    A network wrapped by `torch.compile(net)` (in a project's module) saves its keys under
    `_orig_mod.`; they are read as the plain network's.
    """
    return {
        k[len(NET_PREFIX) :].replace(COMPILED_PREFIX, ""): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(NET_PREFIX)
    }


def network_config(model: Any) -> dict[str, Any]:
    """The model node without the keys lightfit reads itself (`compile`): the network's arguments."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    return {k: v for k, v in node.items() if k not in MODEL_KEYS}


def num_outputs(stored: dict[str, Any]) -> int:
    """The network's output width (checkpoints written before regression say num_classes)."""
    return int(stored["num_outputs"] if "num_outputs" in stored else stored["num_classes"])


def task_config(stored: dict[str, Any]) -> dict[str, Any]:
    """The task a checkpoint was trained for (checkpoints from before tasks: classification),
    with the class weights its loss used as numbers (`balanced` was counted on the training
    data, which evaluate and predict need not have)."""
    task = dict(stored["config"].get("task") or {"name": "classification"})
    if "class_weight" in stored:
        task |= {"class_weight": list(stored["class_weight"]), "pos_weight": None}
    return task


def rebuild_network(checkpoint: dict[str, Any]) -> nn.Module:
    """Standardize + the network (+ TargetScale) the checkpoint was trained with, its weights
    loaded, in eval mode."""
    from hydra.utils import instantiate

    from lightfit.nets import TargetScale, build_network

    stored = checkpoint[CHECKPOINT_KEY]
    try:
        model_cfg = stored["config"]["model"]
        input_shape, width = list(stored["input_shape"]), num_outputs(stored)
    except (KeyError, TypeError) as exc:
        raise LightfitError(f"the checkpoint's '{CHECKPOINT_KEY}' entry is incomplete (no {exc})") from None
    check_targets(model_cfg, "the checkpoint's model config")
    shape = stored.get("target_shape")
    targets = TargetScale.placeholder(shape) if shape is not None else None  # buffers loaded below
    # model.compile is for training: evaluate and predict run the network eagerly
    net = build_network(instantiate(network_config(model_cfg)), input_shape, width, targets=targets)
    weights = net_weights(checkpoint)
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        # load_state_dict lists every mismatch on its own line; the first one names the problem.
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise LightfitError(
            f"the checkpoint's weights do not fit the model in its config "
            f"({model_cfg.get('_target_')}, input {tuple(input_shape)}, {width} outputs): "
            f"{details[0] if details else exc}"
        ) from None
    return net.eval()


def rebuild_task(checkpoint: dict[str, Any], net: nn.Module) -> Any:
    """The Task the checkpoint was trained for (its loss and metrics), for `net` as rebuilt."""
    from lightfit.tasks import build_task

    stored = checkpoint[CHECKPOINT_KEY]
    config = task_config(stored)
    check_targets(config, "the checkpoint's task config")  # a loss or metric by _target_
    return build_task(config, num_outputs(stored), net)


def load_module(cls: type[M], checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any) -> M:
    """`cls(net, task, **kwargs)` with the checkpoint's trained weights, in eval mode: what
    `load_from_checkpoint` does for lightfit's modules and a generated project's `Model`.

    Lightning's own `load_from_checkpoint` calls `cls(**saved hyperparameters)`, but the
    network and the task are objects, which a weights-only checkpoint cannot hold. lightfit
    stores the run's config instead, and the network (with its input standardisation) and
    the task are rebuilt from it. The keys of the run's `loop.module` config that `cls` takes
    are passed too, under `kwargs`, and `optimizer` and `scheduler` None. The task's own
    buffers (class weights) are loaded where the rebuilt task has them; every other weight
    must fit.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    net = rebuild_network(checkpoint)
    task = rebuild_task(checkpoint, net)
    takes = inspect.signature(cls).parameters
    module_cfg = (checkpoint[CHECKPOINT_KEY]["config"].get("loop") or {}).get("module") or {}
    kept = {
        key: value
        for key, value in module_cfg.items()
        if key in takes and not key.startswith("_") and not (isinstance(value, dict) and "_target_" in value)
    }
    # No optimizer: a module to predict and evaluate with (pass `optimizer=` to train it on).
    kept |= {key: None for key in ("optimizer", "scheduler") if key in takes}
    module = cls(net=net, task=task, **{**kept, **kwargs})
    state = checkpoint["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    wrong = [key for key in [*missing, *unexpected] if not key.startswith("task.")]
    if wrong:
        raise LightfitError(
            f"{checkpoint_path}: the weights do not fit {cls.__name__} "
            f"({'missing' if wrong[0] in missing else 'unexpected'} key {wrong[0]})"
        )
    if map_location is not None:
        module = module.to(map_location)
    return module.eval()
