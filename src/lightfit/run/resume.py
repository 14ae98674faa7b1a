"""Nothing lost: atomic checkpoint writes, RNG state in checkpoints, graceful stops.

Resuming from `checkpoints/last.ckpt` (written at the end of every epoch) gives the same
weights as a run that was never interrupted: the model, optimizer, scheduler and counters
are in the checkpoint, the data order depends only on seed and epoch
(`EpochShuffleSampler`), and the random number generators (dropout) are saved here.

SIGTERM (what SLURM sends before preemption), SIGUSR1 (what `#SBATCH --signal=USR1@90`
sends before the time limit) and Ctrl-C stop training at the next batch boundary (the
same batch on every DDP rank) and save `checkpoints/interrupted.ckpt`, the state at that
moment. `last.ckpt` is left alone, so `ckpt_path=last` still resumes exactly from the
last complete epoch. `ckpt_path=auto` takes the newest readable checkpoint of the run
directory, whichever it is, or starts fresh: the same command continues after any stop.

A checkpoint write that fails (a full disk, a file-size limit, a read-only folder) stops
the run with one line naming the file and the OS error, and leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
RNG_KEY = "rng_states"
INTERRUPTED = "interrupted.ckpt"
AUTO = "auto"  # ckpt_path=auto
# What ckpt_path=auto chooses from, in checkpoints/ (best.ckpt is never ahead of last.ckpt).
RESUMABLE = (INTERRUPTED, "last.ckpt")
# Config keys that may differ when ckpt_path=auto continues a run: they change no number
# of the epochs already trained (max_epochs extends a run; with a scheduler that reads it,
# such as cosine's T_max, set that explicitly).
MAY_DIFFER = ("ckpt_path", "trainer.max_epochs", "logger")


class CheckpointWriteFailed(LightfitError):
    """Writing a checkpoint failed with an OS error; the previous file under its name is unchanged."""

    exit_code = 1

    def __init__(self, path: Path, error: OSError) -> None:
        reason = f"[Errno {error.errno}] {error.strerror}" if error.strerror else str(error)
        kept = f"; the previous {path.name} is unchanged" if path.is_file() else ""
        super().__init__(f"could not write checkpoint {path}: {reason}{kept}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it.

    A crash or a full disk during the write leaves the previous checkpoint in place,
    never a truncated one: `os.replace` within one directory is atomic. (Lightning's own
    writer stages the file in the system temp directory, which may be another disk.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink(missing_ok=True)
            if (error := _os_error(exc)) is not None:
                raise CheckpointWriteFailed(path, error) from None
            raise


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: torch.save turns a failed write() into a RuntimeError without errno."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def rng_states() -> dict[str, Any]:
    """Every RNG training draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """`ckpt_path=last` means this run directory's last checkpoint; anything else is a path."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise LightfitError(
                f"ckpt_path=last: there is no {path}; point hydra.run.dir=<run dir> at the run to resume"
            )
        return path
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise LightfitError(f"checkpoint not found: {path}")
    return path


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The run's most advanced checkpoint that loads, and its contents; None if there is none.

    "Most advanced" by the training progress stored in it (epoch, then step), the file's
    modification time on a tie. One that does not load (truncated, not a checkpoint) is
    skipped with a warning naming it, and the next one is tried.
    """
    from lightfit.run.checkpoint import load_checkpoint

    found = []
    for name in RESUMABLE:
        path = run_dir / "checkpoints" / name
        if not path.is_file():
            continue
        try:
            checkpoint = load_checkpoint(path)
        except LightfitError as exc:
            _say(f"warning: ckpt_path=auto skips an unreadable checkpoint: {exc}", logging.WARNING)
            continue
        progress = (int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", -1)))
        found.append((progress, path.stat().st_mtime, path, checkpoint))
    if not found:
        return None
    *_, path, checkpoint = max(found, key=lambda item: item[:2])
    return path, checkpoint


def _say(message: str, level: int = logging.INFO) -> None:
    """Log once per run, not once per DDP rank."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        log.log(level, message)


def load_resume(ckpt_path: str | None, run_dir: Path, net: torch.nn.Module, config: dict[str, Any]) -> Resume:
    """What `ckpt_path` resumes from, checked against this run's network and `config` (resolved).

    `auto`: the newest checkpoint of `run_dir` (or a fresh start), which must have been
    written with the same config but for `MAY_DIFFER`. `last`, or a path: that file, and
    a file that does not load is an error.
    """
    from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint

    if ckpt_path != AUTO:
        path = resolve_ckpt_path(ckpt_path, run_dir)
        if path is None:
            return Resume()
        checkpoint = load_checkpoint(path)  # weights only: a hostile pickle is refused, not run
        check_compatible(checkpoint, net, path)
        return Resume(path, checkpoint)
    found = newest_checkpoint(run_dir)
    if found is None:
        _say(f"ckpt_path=auto: no checkpoint in {run_dir / 'checkpoints'}, starting fresh")
        return Resume()
    path, checkpoint = found
    check_compatible(checkpoint, net, path)
    if difference := first_difference(checkpoint[CHECKPOINT_KEY].get("config", {}), config):
        key, theirs, ours = difference
        raise LightfitError(
            f"ckpt_path=auto: {path} was written with {key}={theirs}, this run has {key}={ours}; "
            f"run the command that wrote it, or resume from it on purpose with ckpt_path={path}"
        )
    epoch, step = checkpoint["epoch"] + 1, checkpoint["global_step"]
    _say(f"ckpt_path=auto: resuming from {path} (saved in epoch {epoch}, at step {step})")
    return Resume(path, checkpoint)


def first_difference(theirs: Any, ours: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first config key (dotted) whose value differs, but for `MAY_DIFFER`; None if none does."""
    if key in MAY_DIFFER:
        return None
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in sorted(theirs.keys() | ours.keys()):
            missing = "(absent)"
            found = first_difference(
                theirs.get(name, missing), ours.get(name, missing), f"{key}.{name}" if key else name
            )
            if found:
                return found
        return None
    return None if theirs == ours else (key, theirs, ours)


def check_compatible(checkpoint: dict[str, Any], net: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint of another network shape with one line, before Lightning tries to load it."""
    own = {f"net.{k}": v.shape for k, v in net.state_dict().items()}
    theirs = {k: v.shape for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    for key in sorted(own.keys() | theirs.keys()):
        if own.get(key) != theirs.get(key):
            shape = {
                k: tuple(d[key]) if key in d else "absent" for k, d in (("there", theirs), ("here", own))
            }
            raise LightfitError(
                f"{path} holds a different network: {key} is {shape['there']} there but {shape['here']} "
                "with this config (same model and data settings as the run that wrote it?)"
            )


@dataclass
class Resume:
    """Where a run resumes from: the checkpoint file and its contents (None: a fresh run)."""

    path: Path | None = None
    checkpoint: dict[str, Any] | None = None

    def keep_metrics(self, logger: Any) -> None:
        if self.checkpoint is not None and logger and getattr(logger, "log_dir", None):
            replay_metrics(logger, Path(logger.log_dir) / "metrics.csv", self.checkpoint["epoch"])


def replay_metrics(logger: Any, csv_path: Path, up_to_epoch: int) -> None:
    """Keep the metrics.csv rows of the epochs a resumed run continues after.

    Lightning's CSV logger deletes an existing metrics.csv when it starts; the rows are
    read first and logged again, so the file still covers the whole run.
    """
    if not csv_path.is_file():
        return
    with csv_path.open(newline="") as f:
        rows = [
            row for row in csv.DictReader(f) if row.get("epoch") and int(float(row["epoch"])) <= up_to_epoch
        ]
    for row in rows:
        step = int(float(row.pop("step")))
        values = {k: float(v) for k, v in row.items() if v not in ("", None)}
        logger.log_metrics(values | {"epoch": int(values["epoch"])}, step)
