"""Lightning callbacks: the per-epoch console line, and stopping cleanly on a signal."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from lightfit.console import epoch_line
from lightfit.resume import StopRequest

log = logging.getLogger("lightfit")


class StopRequested(Exception):
    """Raised at a batch end after a Ctrl-C, to leave `trainer.fit` through its error path."""


class StopOnSignal(Callback):
    """The Lightning side of `StopRequest`: stop at a batch end and save `path`.

    Lightning installs its own SIGTERM handler when training starts. Under DDP that
    handler broadcasts from inside the signal handler, in the middle of whatever collective
    the rank was in, and the ranks can wait on each other until the launcher kills them
    (Lightning issue 20806). So SIGTERM is taken back here, like Ctrl-C it only sets a
    flag, and the ranks agree at each batch end (`StopRequest.agreed`): all of them stop
    at the same batch, and all of them take part in saving the checkpoint.
    """

    def __init__(self, stop: StopRequest, path: Path) -> None:
        self.stop, self.path = stop, path
        self.where, self.saved = "", None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.stop.reclaim_sigterm()  # Lightning registered its handler just before this hook

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.stop.agreed(trainer.world_size > 1):
            raise StopRequested(self.stop.signum)  # Lightning calls on_exception, then re-raises

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, StopRequested):
            return  # a real error, not a stop: nothing to save
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.completed + 1  # counted after this hook
        self.where = f"epoch {trainer.current_epoch + 1}, batch {batch}"
        trainer.save_checkpoint(self.path, weights_only=False)  # every rank: rank 0 writes, all wait
        self.saved = self.path


class EpochLine(Callback):
    """Prints `epoch_line` at the end of each training epoch (rank 0 only)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for it

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            seconds = time.perf_counter() - self.start
            log.info(
                epoch_line(trainer.current_epoch + 1, trainer.max_epochs, trainer.callback_metrics, seconds)
            )
