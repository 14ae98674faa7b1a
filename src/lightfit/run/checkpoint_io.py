"""Writing checkpoints: atomically, in the background, one file for several names, one line on failure.

`AtomicCheckpointIO` writes to a temporary file beside the target, fsyncs and renames: a
crash or a full disk leaves the previous checkpoint whole. A write that fails stops the run
with `CheckpointWriteFailed`, one line naming the file and the OS error.
`BackgroundCheckpointIO` (what both loops use) does that in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection

from lightfit.errors import LightfitError

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

    A write with its fsync took 30 to 50 ms here: at an epoch end (best.ckpt and last.ckpt)
    that was 5 to 10% of an epoch of workload (b), and as much again per step checkpoint.
    The training thread now only copies the tensors (what Lightning's AsyncCheckpointIO
    does, but keeping the atomic rename). One write at a time: the next save, `teardown`
    (Lightning calls it when fit ends, also on a stop) and the interpreter's exit (not a
    daemon thread) wait for it, and a failed write is raised there.
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


def copies(*paths: Path | None) -> dict[str, Sequence[Path]] | None:
    """storage_options for a save that also writes `paths` (None ones left out), or None."""
    chosen = [p for p in paths if p is not None]
    return {COPIES: chosen} if chosen else None
