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

A mid-epoch checkpoint is only ever written after an optimizer step (at an accumulation
boundary, never with gradients half accumulated) and never at an epoch's last batch (the
epoch-end `last.ckpt` follows a moment later): a stop requested elsewhere carries on to
the next such boundary.

SIGTERM (what SLURM sends before preemption) and Ctrl-C stop training there (the same
batch on every DDP rank) and save `checkpoints/interrupted.ckpt`. `last.ckpt` is left
alone, so `ckpt_path=last` still resumes from the last epoch end or step checkpoint.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection

from lightfit.errors import LightfitError

RNG_KEY = "rng_states"
EPOCH_KEY = "epoch_position"  # where in its epoch a checkpoint was written (see epoch_position)
INTERRUPTED = "interrupted.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it.

    A crash or a full disk during the write leaves the previous checkpoint in place,
    never a truncated one: `os.replace` within one directory is atomic. (Lightning's own
    writer stages the file in the system temp directory, which may be another disk.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class BackgroundCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO that writes in a thread, so that training goes on during the write.

    Used with step checkpoints (`checkpoint.every_n_train_steps`): a write with its fsync
    took 30 to 50 ms here, 5 to 10% of an epoch of workload (b) at 2 writes an epoch; the
    training thread now only copies the tensors (what Lightning's AsyncCheckpointIO does,
    but keeping the atomic rename). One write at a time: the next save, `teardown` (Lightning
    calls it when fit ends, also on a stop) and the interpreter's exit (not a daemon thread)
    wait for it, and a failed write is raised there.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.wait()
        # clone: the weights change in place at the next step, while the thread writes these
        snapshot = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
        self._thread = threading.Thread(
            target=self._write, args=(snapshot, path, storage_options), name="lightfit-checkpoint"
        )
        self._thread.start()

    def _write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any) -> None:
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
        except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Until the write in progress is on disk; raises its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def teardown(self) -> None:
        self.wait()


def checkpoint_io(every_n_train_steps: int | None) -> AtomicCheckpointIO:
    """In the background when checkpoints come every few steps; else each write waits."""
    return BackgroundCheckpointIO() if every_n_train_steps else AtomicCheckpointIO()


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


class TrainingInterrupted(LightfitError):
    """Training stopped on SIGTERM or Ctrl-C after saving `interrupted.ckpt`."""

    def __init__(self, signum: int, where: str, saved: Path | None, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        kept = f"saved {saved}; " if saved else ""
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            hint = f"resume from the last complete epoch with ckpt_path=last hydra.run.dir={run_dir}"
        else:
            hint = "no epoch had completed, so there is nothing to resume"
        super().__init__(f"stopped by {name} at {where}; {kept}{hint}")
        self.exit_code = 128 + signum


class StopRequest:
    """While active, SIGTERM and a first Ctrl-C only set `signum`; the loop stops at a batch boundary.

    A second Ctrl-C interrupts at once, as usual. Outside the main thread (where signal
    handlers cannot be set) this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        # Under DDP (`agreed`): the process group for the flag, and the exchange in flight.
        self._group: Any = None
        self._pending: torch.Tensor | None = None
        self._work: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def reclaim_sigterm(self) -> None:
        """Point SIGTERM back here after a library (Lightning's Trainer) installed its own handler."""
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, self._handle)

    def agreed(self, distributed: bool = False) -> bool:
        """Whether to stop now; under DDP (`distributed`) every rank gets the same answer.

        The ranks must stop at the same batch, or the ones still training wait forever for
        the others in their next gradient all-reduce, and saving the checkpoint (a collective
        too) never finishes. So each rank's request is reduced with max across ranks: a
        signal seen by any rank stops all of them, one batch later. The flag travels on the
        CPU in a gloo group of its own, started at one batch end and read at the next: the
        GPU is never waited for, and the exchange overlaps a training step.
        """
        if not distributed:
            return self.signum is not None
        dist = torch.distributed
        if self._group is None:  # every rank gets here at its first batch end: a collective
            self._group = dist.new_group(backend="gloo")
        pending, work = self._pending, self._work
        self._pending = torch.tensor([self.signum or 0])
        self._work = dist.all_reduce(self._pending, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        if pending is None:
            return False
        work.wait()
        signum = int(pending)
        if signum and self.signum is None:
            self.signum = signum  # another rank got the signal first
        return signum != 0
