"""Errors a person can fix, and how every lightfit entry point reports them: one line, exit 2.

A traceback is for bugs. Bad input (a wrong path, NaN features, a mistyped override) is
the user's to fix, so it gets one line that names the file, key or value and what was
expected. Set LIGHTFIT_TRACEBACK=1 (or Hydra's HYDRA_FULL_ERROR=1) to see the traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_USAGE = 2
LAUNCHER_PID = "LIGHTFIT_LAUNCHER_PID"  # set in the DDP ranks that lightfit.run.distributed starts
# A rank that stopped because another rank's process ended: the launcher reports that one.
EXIT_OTHER_RANK_FAILED = 3
# What gloo raises in a rank when another rank's process has ended (its sockets closed)
PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe")


class LightfitError(ValueError):
    """Bad input or configuration; the message is shown to the user as it is."""

    exit_code = EXIT_USAGE


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _hydra_message(exc: BaseException) -> str:
    """Fold Hydra's and OmegaConf's multi-line messages into one line."""
    text = str(exc)
    head = _first_line(text)
    override = getattr(exc, "override", None)
    if override is not None:  # OverrideParseException
        return f"cannot parse override '{override}': {head}"
    options = re.search(
        r"Available options in '([^']+)':\s*(.*?)(?:\n\s*\n|Config search path|$)", text, re.S
    )
    if options:
        names = ", ".join(options.group(2).split())
        return f"{head} (available in '{options.group(1)}': {names})"
    if (missing := re.search(r"Could not load '(.+)/([^/']+)'", head)) is not None:
        group, name = missing.groups()  # `callbacks=[early_stoping]`: Hydra lists no options then
        if names := _group_options(group, re.findall(r"path=(\S+)", text)):
            return f"{head.rstrip('.')} (available in '{group}': {', '.join(names)})"
    cause = exc.__cause__ or exc.__context__
    if (unknown := _unknown_key(cause)) is not None:
        return unknown
    callback = re.match(r"Could not override 'callbacks\.([^.']+)\.", head)
    if callback and "not in struct" in str(cause):  # callbacks.early_stopping.patience=5 alone
        name = callback.group(1)
        return (
            f"{head.rstrip('.')}: callbacks.{name} is not in this run: add callbacks=[{name}] "
            f"(several: callbacks=[{name},...]), or +callbacks.{name}._target_=... for a callback of your own"
        )
    if (unknown := _unknown_in_node(cause)) is not None:  # `lightfit serve prot=9000`: no schema there
        return unknown
    if type(exc).__name__ == "MissingMandatoryValue" and getattr(exc, "full_key", None):
        return f"{head}: add {exc.full_key}=... to the command"  # `lightfit predict` without output=
    detail = _first_line(str(cause)) if cause is not None else ""
    if detail and "$" not in detail and detail.split(":")[0] not in head:
        return f"{head.rstrip('.')}: {detail}"
    hint = re.search(r"^(To append to your config use .*)$", text, re.M)
    return f"{head} ({hint.group(1)})" if hint else head


def _group_options(group: str, search_path: list[str]) -> list[str]:
    """The options of a config group in the packages and folders of Hydra's search path."""
    from importlib.resources import files
    from pathlib import Path

    names: set[str] = set()
    for location in search_path:
        scheme, _, where = location.partition("://")
        try:
            folder = files(where) / group if scheme == "pkg" else Path(where) / group
            if scheme in ("pkg", "file") and folder.is_dir():
                names.update(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))
        except (ModuleNotFoundError, OSError):  # a package or folder that is not there: no options
            continue
    return sorted(names)


def _unknown_in_node(exc: BaseException | None) -> str | None:
    """`prot=9000` in a config without a typed schema: "Key 'prot' is not in struct" as the
    line for an unknown key, with the nearest of the keys the node has."""
    from omegaconf import DictConfig

    node, key, full_key = (getattr(exc, name, None) for name in ("parent_node", "key", "full_key"))
    if "not in struct" not in str(exc) or not isinstance(node, DictConfig) or not isinstance(key, str):
        return None
    keys = [k for k in node if isinstance(k, str) and k != "hydra"]
    if not keys:
        return None
    path = str(full_key or key).rpartition(".")[0]
    return unknown_key(key, keys, path, path or "the config")


def _unknown_key(exc: BaseException | None) -> str | None:
    """`trainer.max_step=3`: OmegaConf's "Key 'max_step' not in 'TrainerSchema'" as lightfit's
    line for an unknown key (cli/known_keys.py), with the nearest key of the schema."""
    import dataclasses

    kind, key = getattr(exc, "object_type", None), getattr(exc, "key", None)
    full_key = getattr(exc, "full_key", None)
    if not (dataclasses.is_dataclass(kind) and isinstance(key, str) and isinstance(full_key, str)):
        return None
    if "not in" not in str(exc):  # a missing key, not some other error about a schema's key
        return None
    path = full_key.rpartition(".")[0]
    fields = [f.name for f in dataclasses.fields(kind)]
    owner = path or "the config"
    return unknown_key(key, fields, path, owner, getattr(kind, "instead", {}))


def unknown_key(
    key: str, valid: list[str], path: str, owner: str, instead: dict[str, str] | None = None
) -> str:
    """The line for a key of the node at `path` that is not in `valid`: what to write instead
    (a key that lightfit sets itself, in `instead`), the nearest valid key, or all of them.
    Also what a mistyped override (`trainer.max_step=3`) says while Hydra composes (errors.py)."""
    import difflib

    if instead and key in instead:
        return f"{_join(path, key)}: {instead[key]}"
    public = [v for v in valid if not v.startswith("_")]
    near = difflib.get_close_matches(key, public, n=1)
    hint = f"did you mean {_join(path, near[0])}?" if near else f"valid: {', '.join(public)}"
    return f"unknown key {_join(path, key)}: {owner} takes no '{key}' ({hint})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def one_line(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a LightfitError wrapped by Hydra
        seen.add(id(current))
        if isinstance(current, LightfitError):
            return str(current)
        current = current.__cause__ or current.__context__
    module = type(exc).__module__
    if module.startswith(("hydra", "omegaconf")):
        return _hydra_message(exc)
    if isinstance(exc, RuntimeError) and str(exc) == "Numpy is not available":  # e.g. torch 2.2 with numpy 2
        from importlib.metadata import version

        return (
            f"torch {version('torch')} cannot use numpy {version('numpy')} (it was built against "
            "numpy 1.x): pip install 'numpy<2', or a newer torch"
        )
    return None


def _exit_code(exc: BaseException) -> int:
    while exc is not None and not isinstance(exc, LightfitError):
        exc = exc.__cause__ or exc.__context__
    return exc.exit_code if exc is not None else EXIT_USAGE


def traceback_wanted() -> bool:
    if "LIGHTFIT_TRACEBACK" in os.environ:  # decided once, inherited by child processes
        return os.environ["LIGHTFIT_TRACEBACK"] not in ("", "0")
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


@contextmanager
def reported(prog: str, show_traceback: bool | None = None) -> Iterator[None]:
    """Run an entry point; turn user errors into `prog: error: ...` and exit code 2."""
    if show_traceback is None:
        show_traceback = traceback_wanted()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        message = one_line(exc)
        if message is None and not show_traceback and another_rank_failed(exc):
            raise SystemExit(EXIT_OTHER_RANK_FAILED) from None  # its own line or traceback says why
        if message is None or show_traceback:
            raise
        say(prog, message)
        raise SystemExit(_exit_code(exc)) from None


def another_rank_failed(exc: BaseException) -> bool:
    """In a rank that lightfit's launcher started: `exc` is gloo's error for a rank whose process
    ended (a failed rank closes its connections as it exits). The launcher then reports the
    rank that failed, in one line; this rank's traceback would only bury that line."""
    if LAUNCHER_PID not in os.environ:
        return False
    while exc is not None:
        if isinstance(exc, RuntimeError) and PEER_GONE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def say(prog: str, message: str) -> None:
    """Print the one-line error once, though under DDP every rank meets the same bad input.

    torchrun and lightfit's launcher give each rank a file for its error
    (TORCHELASTIC_ERROR_FILE): the message goes there, so their failure report names it.
    Under lightfit's launcher the job process prints it; otherwise rank 0 does.
    """
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    if LAUNCHER_PID in os.environ:
        return
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":
        print(f"{prog}: error: {message}", file=sys.stderr)


@contextmanager
def reported_in_job(prog: str) -> Iterator[None]:
    """`reported` inside a Hydra task function, for single runs.

    Hydra announces a failed job on stderr ("Error executing job with overrides") before
    re-raising; in a single run that line says nothing new, so the error is reported here.
    In a sweep the line names the failing job, so the error is left to Hydra and `reported`.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        yield
    else:
        with reported(prog):
            yield


def run_hydra_entry(prog: str, hydra_entry: Callable[[], object]) -> None:
    """Call a @hydra.main function so that its errors reach `reported` instead of Hydra's printer."""
    show_traceback = traceback_wanted()
    # Hydra re-raises instead of printing a stripped traceback when this is set;
    # `reported` then prints one line, or the traceback if the user asked for it.
    os.environ["LIGHTFIT_TRACEBACK"] = "1" if show_traceback else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with reported(prog, show_traceback):
        hydra_entry()
