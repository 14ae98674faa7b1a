"""No silent keys: every key of a composed config is one that something reads.

Hydra checks an override against its schema (`loop.l1=1e-4` fails), but a key added with
`+` (`+loop.l1=1e-4`) is accepted into a typed node and then ignored by everything: the run
is the default one. And a node that names a user's own class or function by `_target_`
has no schema at all; a misspelt argument would only fail when it is instantiated,
minutes later, or never if the node is optional.

`check_keys(cfg)` walks a composed config once, before anything heavy is imported: a node
typed by a schema (config.py) may hold only that schema's fields; a node with `_target_`
and no schema may hold only the callable's parameters (anything goes when it takes
**kwargs). One line names the key, and the nearest valid one when there is one.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightfit.errors import LightfitError, unknown_key

# Keys that Hydra's instantiate reads itself, whatever the target.
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# Keys lightfit reads off a node before instantiating it, by the node's path ([] for any index).
LIGHTFIT_KEYS = {
    "task.metrics[]": ("name",),  # a metric entry's column name
    "logger": ("log_model",),  # the MLflow setting, on a logger written without its name
    "model": ("compile",),  # model.compile=true: torch.compile for training (run/context.py)
    "scheduler": ("interval", "frequency", "monitor"),  # Lightning's lr_scheduler dict (run/schedule.py)
}


def check_keys(cfg: DictConfig, path: str = "") -> None:
    """One line (LightfitError) for the first key of a composed `cfg` that nothing takes."""
    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        fields = [f.name for f in dataclasses.fields(kind)]
        owner = cfg["_target_"] if "_target_" in fields else (path or "the config")
        _check(cfg.keys(), fields, path, owner, getattr(kind, "instead", {}))
    elif "_target_" in cfg:
        accepted = _parameters(cfg, path)
        if accepted is not None:
            extra = LIGHTFIT_KEYS.get(re.sub(r"\[\d+\]$", "[]", path), ())
            _check(cfg.keys(), [*accepted, *HYDRA_KEYS, *extra], path, cfg["_target_"])
    for key in cfg:
        _descend(cfg._get_node(key), _join(path, str(key)))


def _descend(node: Any, path: str) -> None:
    """Into a node's dicts and lists; not into a value still to come (missing, None, ${...})."""
    if node._is_missing() or node._is_none() or node._is_interpolation():
        return
    if isinstance(node, DictConfig):
        check_keys(node, path)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _descend(node._get_node(i), f"{path}[{i}]")


def _parameters(cfg: DictConfig, path: str) -> list[str] | None:
    """The keyword parameters of the node's `_target_`; None when it takes **kwargs."""
    target = cfg["_target_"]
    try:
        found = locate(target)
    except (ImportError, AttributeError) as exc:
        where = _join(path, "_target_")
        raise LightfitError(f"{where}={target} cannot be imported: {exc}") from None
    try:
        params = inspect.signature(found).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def locate(target: str) -> Any:
    """The object a dotted `_target_` names: the longest importable module, then attributes."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not name.startswith(exc.name):
                raise  # the module exists but imports something missing: say that
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"no module named {parts[0]!r}")


def _check(
    keys: Iterable[Any], valid: list[str], path: str, owner: str, instead: dict[str, str] | None = None
) -> None:
    """One line for the first key not in `valid`: the nearest valid key, or all of them."""
    for key in map(str, keys):
        if key not in valid:
            raise LightfitError(unknown_key(key, valid, path, owner, instead))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
