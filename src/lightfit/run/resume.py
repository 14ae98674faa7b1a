"""Nothing lost: atomic checkpoint writes, exact resumes from any batch, graceful stops.

Resuming from any checkpoint of a run, written at an epoch end (`last.ckpt`), every N
optimizer steps (`checkpoint.every_n_train_steps=N`, also `last.ckpt`) or on a stop
(`interrupted.ckpt`), gives the same weights, results.json and metrics.csv rows as a run
that was never interrupted (tests/test_kill.py kills runs at random moments to check it).
A checkpoint holds the model, optimizer, scheduler and loop counters, and under
`EPOCH_KEY` where in its epoch it was written (`epoch_position`): the batches already
trained (the data order depends only on seed and epoch, `EpochShuffleSampler`, so the
resumed run skips exactly those), and for each DDP rank every RNG (dropout) and the
training metrics accumulated so far in the epoch (`StageMetrics.epoch_state`). Lightning
saves from rank 0 only, so the ranks' states are gathered to it first.

SIGTERM (what SLURM sends before preemption), SIGUSR1 (what `#SBATCH --signal=USR1@90`
sends before the time limit) and Ctrl-C stop training at the next batch boundary (the
same batch on every DDP rank) and save `checkpoints/interrupted.ckpt`, the state at that
moment (signals.py). `ckpt_path=auto` takes the newest readable checkpoint of the run
directory, whichever it is, or starts fresh: the same command continues after any stop.

A mid-epoch checkpoint is only ever written after an optimizer step (at an accumulation
boundary, never with gradients half accumulated) and never at an epoch's last batch (the
epoch-end `last.ckpt` follows a moment later): a stop requested elsewhere carries on to
the next such boundary. How checkpoints are written (atomically, in the background, one
line when a write fails): checkpoint_io.py. Whether a checkpoint given as `ckpt_path=<file>`
may continue into this run (same data, model and task, epochs left, whose best.ckpt):
same_run.py.
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
RNG_KEY = "rng_states"
EPOCH_KEY = "epoch_position"  # where in its epoch a checkpoint was written (see epoch_position)
INTERRUPTED = "interrupted.ckpt"
AUTO = "auto"  # ckpt_path=auto
# What ckpt_path=auto chooses from, in checkpoints/ (best.ckpt is never ahead of last.ckpt).
RESUMABLE = (INTERRUPTED, "last.ckpt")
# Config keys that may differ when ckpt_path=auto continues a run: they change no number
# of the epochs already trained (max_epochs extends a run; with a scheduler that reads it,
# such as cosine's T_max, set that explicitly).
# model.compile: compiled or eager, the network computes the same; either may continue the other
MAY_DIFFER = ("ckpt_path", "trainer.max_epochs", "logger", "model.compile")
BEST = "best.ckpt"


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


def gathered(obj: Any) -> list[Any]:
    """`obj` of every DDP rank, in rank order, on every rank (a collective); `[obj]` in one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    objects: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def epoch_position(epoch: int, batches: int, epoch_done: bool, train_metrics: Any) -> dict[str, Any]:
    """Where in `epoch` (0-based) a checkpoint is written: `batches` trained, and per rank the
    RNG states and the training metrics so far. Under DDP every rank must call it (a gather)."""
    mine = {RNG_KEY: rng_states(), "train_metrics": train_metrics.epoch_state()}
    return {"epoch": epoch, "batches": batches, "epoch_done": epoch_done, "ranks": gathered(mine)}


def restore_position(position: dict[str, Any], rank: int, train_metrics: Any) -> None:
    """Give this rank back its RNG states and, mid-epoch, its training metrics so far."""
    ranks = position["ranks"]
    if len(ranks) != max(len(gathered(None)), rank + 1) and not position["epoch_done"]:
        raise LightfitError(
            f"this checkpoint was written mid-epoch by {len(ranks)} process(es); resume it with as many "
            "(the batches of an epoch depend on the number of processes), or from an epoch-end last.ckpt"
        )
    mine = ranks[min(rank, len(ranks) - 1)]
    restore_rng_states(mine[RNG_KEY])
    if not position["epoch_done"]:
        train_metrics.load_epoch_state(mine["train_metrics"])


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
    written with the same config but for `MAY_DIFFER`. `last`, or a path: that file, which
    must load, share this run's `SAME_RUN` keys and leave epochs to train. A checkpoint of
    another run directory continues into this one (`adopt_best`). Those three: same_run.py.
    """
    from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint

    # Here, not at the top: same_run.py imports this module.
    from lightfit.run.same_run import adopt_best, check_left_to_train, check_same_run

    if ckpt_path != AUTO:
        path = resolve_ckpt_path(ckpt_path, run_dir)
        if path is None:
            return Resume()
        checkpoint = load_checkpoint(path)  # weights only: a hostile pickle is refused, not run
        check_same_run(checkpoint[CHECKPOINT_KEY].get("config") or {}, config, ckpt_path, path)
        check_compatible(checkpoint, net, path)
        check_left_to_train(checkpoint, config, ckpt_path, path)
        return adopt_best(Resume(path, checkpoint), run_dir)
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
    return next(differences(theirs, ours, key, MAY_DIFFER), None)


def differences(theirs: Any, ours: Any, key: str, skip: tuple[str, ...]) -> Iterator[tuple[str, Any, Any]]:
    """Each config key (dotted, sorted) whose value differs, as (key, theirs, ours), but for `skip`."""
    if key in skip:
        return
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in sorted(theirs.keys() | ours.keys()):
            missing = "(absent)"
            yield from differences(
                theirs.get(name, missing), ours.get(name, missing), f"{key}.{name}" if key else name, skip
            )
    elif theirs != ours and not (theirs == "(absent)" and ours is None):  # None: a key added since
        yield key, theirs, ours


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
    # Whether the checkpoint's best score has its weights in this run's best.ckpt (adopt_best):
    # if not, the loops drop the score and pick best.ckpt among the epochs they train.
    keeps_best: bool = True

    @property
    def mid_epoch(self) -> tuple[int, int] | None:
        """(epoch, batches trained in it) when the checkpoint was written inside an epoch."""
        position = (self.checkpoint or {}).get(EPOCH_KEY)
        if position is None or position["epoch_done"]:
            return None
        return position["epoch"], position["batches"]

    def keep_metrics(self, logger: Any) -> None:
        if self.checkpoint is not None and logger and getattr(logger, "log_dir", None):
            done = self.checkpoint["epoch"] - (1 if self.mid_epoch else 0)  # the last epoch with its rows
            replay_metrics(logger, Path(logger.log_dir) / "metrics.csv", done)


def replay_metrics(logger: Any, csv_path: Path, up_to_epoch: int) -> None:
    """Keep the metrics.csv rows of the epochs a resumed run continues after.

    Lightning's CSV logger deletes an existing metrics.csv when it starts; the rows are
    read first, logged again and saved, so the file still covers the whole run.
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
    # Written back at once: the logger removed the file when it started, and a run killed
    # before its next epoch end would otherwise leave the rows only in memory.
    logger.save()
