"""Writing checkpoints: atomically, in the background, one file for several names, one line on failure.

`AtomicCheckpointIO` writes to a temporary file beside the target, fsyncs and renames: a
crash or a full disk leaves the previous checkpoint whole. A write that fails stops the run
with `CheckpointWriteFailed`, one line naming the file and the OS error.
`BackgroundCheckpointIO` (what both loops use) does that in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lightfit.errors import LightfitError

log = logging.getLogger(__name__)
# storage_options key: more names for the same checkpoint (best.ckpt beside last.ckpt), written once
COPIES = "copies"


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
    `storage_options={"copies": [path, ...]}` gives the same checkpoint more names: the file
    is written once and hard-linked (copied where links do not work) before each rename.
    """

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        """What `Trainer.fit(ckpt_path=...)` resumes from, read with `torch.load(weights_only=True)`
        whatever Lightning asks: Lightning < 2.6 has no `weights_only` to pass, and on torch < 2.6
        `torch.load` would unpickle (run) anything in the file."""
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        more_names = [Path(p) for p in (storage_options or {}).get(COPIES, ())]
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary(path)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            for name in more_names:  # each name whole or untouched, as for `path`
                _replace_with(tmp, name)
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            if (error := _os_error(exc)) is not None:
                raise CheckpointWriteFailed(path, error) from None
            raise


def _temporary(path: Path) -> Path:
    """A new empty file beside `path`, for writing and then renaming over it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _replace_with(written: Path, path: Path) -> None:
    """Give `path` the content of the finished file `written`, atomically: a hard link, else a copy."""
    tmp = _temporary(path)
    try:
        tmp.unlink()
        try:
            os.link(written, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(written, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: torch.save turns a failed write() into a RuntimeError without errno."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


class BackgroundCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO that writes in a thread, so that training goes on during the write.

    A synchronous save of workload (b)'s model took 7 to 10 ms here, most of it torch.save
    and the fsync; at an epoch end and at each step checkpoint, training waited for it. The
    training thread now only copies the tensors (what Lightning's AsyncCheckpointIO does,
    but keeping the atomic rename). One write at a time: the next save, `teardown`
    (Lightning calls it when fit ends, also on a stop) and the interpreter's exit (not a
    daemon thread) wait for it, and a failed write is raised there.

    What the saves cost goes to train.log at teardown (DEBUG, the file only): the time
    on the training thread of each save made under `timed()`, and the writer's time and
    CPU time. `make bench` reads that line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._blocked: list[float] = []  # seconds on the training thread, per save under timed()
        self._written: list[tuple[float, float]] = []  # (seconds, CPU seconds) per write

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.wait()
        snapshot = frozen(checkpoint)  # the weights change in place at the next step, while the thread writes
        self._thread = threading.Thread(
            target=self._write, args=(snapshot, path, storage_options), name="lightfit-checkpoint"
        )
        self._thread.start()

    def _write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
        except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = exc
        self._written.append((time.perf_counter() - start, time.thread_time() - cpu))

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time in the block (building the state, then the save) as one save's cost."""
        start = time.perf_counter()
        yield
        self._blocked.append(time.perf_counter() - start)

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
        if self._written:
            log.debug(save_costs(self._blocked, self._written))
        self._blocked, self._written = [], []


def frozen(obj: Any) -> Any:
    """A copy of a checkpoint that training cannot change: tensors cloned, containers copied.

    Lightning's apply_to_collection does this too, but it visits every item of every tuple
    (Python's RNG state is a tuple of 625 ints, and a checkpoint holds it twice): 2.1 ms a
    save of workload (b)'s state, against 0.5 ms here, where a tuple or list with no tensor
    and no container in it is kept or copied whole.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        items = {k: frozen(v) for k, v in obj.items()}
        return items if type(obj) is dict else _same_type(obj, items)
    if isinstance(obj, (list, tuple)):
        if not any(isinstance(v, (torch.Tensor, dict, list, tuple, np.ndarray)) for v in obj):
            return list(obj) if isinstance(obj, list) else obj  # a tuple of plain values cannot change
        items = [frozen(v) for v in obj]
        return items if type(obj) is list else _same_type(obj, items)
    if isinstance(obj, np.ndarray):
        return obj.copy()
    return obj  # numbers, strings, None, paths: not changed in place by training


def _same_type(obj: Any, items: Any) -> Any:
    """`items` as the container type of `obj` (an OrderedDict, a named tuple), else as they are."""
    try:
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    except TypeError:  # a type whose constructor takes something else: keep the plain copy
        return items


def save_costs(blocked: list[float], written: list[tuple[float, float]]) -> str:
    """The teardown line: what the saves cost the training thread, and what the writes took."""

    def ms(values: list[float]) -> float:  # the mean, in milliseconds
        return 1000 * sum(values) / max(len(values), 1)

    return (
        f"checkpoints: {len(written)} written; {ms(blocked):.2f} ms per save on the training thread, "
        f"{ms([w for w, _ in written]):.2f} ms per write in the background, "
        f"{ms([c for _, c in written]):.2f} ms of it CPU"
    )


def copies(*paths: Path | None) -> dict[str, Sequence[Path]] | None:
    """storage_options for a save that also writes `paths` (None ones left out), or None."""
    chosen = [p for p in paths if p is not None]
    return {COPIES: chosen} if chosen else None
