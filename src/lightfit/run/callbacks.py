"""Lightning callbacks: the epoch line with best and last checkpoints, stopping on a signal."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, Checkpoint

from lightfit.run.best import BestScore
from lightfit.run.checkpoint_io import copies
from lightfit.run.console import epoch_line
from lightfit.run.signals import StopRequest

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
        if not may_save_mid_epoch(trainer, batch_idx):
            return  # the same batches on every rank: the ranks' exchanges stay in step
        if self.stop.agreed(trainer.world_size > 1):
            raise StopRequested(self.stop.signum)  # Lightning calls on_exception, then re-raises

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, StopRequested):
            return  # a real error, not a stop: nothing to save
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.completed + 1  # counted after this hook
        self.where = f"epoch {trainer.current_epoch + 1}, batch {batch}"
        trainer.save_checkpoint(self.path, weights_only=False)  # every rank: rank 0 writes, all wait
        self.saved = self.path


def may_save_mid_epoch(trainer: Any, batch_idx: int) -> bool:
    """Whether a checkpoint at this batch end resumes exactly: right after an optimizer step
    (nothing accumulated would be lost) and not at the epoch's last batch (that state is saved
    by the epoch end, after validation, which a restart here would skip)."""
    if batch_idx + 1 >= trainer.num_training_batches:
        return False
    accumulate = getattr(trainer.lightning_module, "accumulate_grad_batches", trainer.accumulate_grad_batches)
    return (batch_idx + 1) % accumulate == 0


class RunCheckpoints(Checkpoint):
    """What each epoch end does, as `on_epoch_end` does in the explicit loop: the epoch line
    (rank 0), then `best.ckpt` when the monitored metric improves (ties: see BestScore) and
    `last.ckpt`; with `every_n_train_steps`, `last.ckpt` every N optimizer steps too.

    Saved at the end of each training epoch, after validation, as ModelCheckpoint does by
    default; a `Checkpoint` subclass, so Lightning runs it after the other callbacks. Its
    state (the best score) travels in every checkpoint, so a resumed run keeps it. The epoch
    line lives here too, not in a callback of its own: Lightning calls six hooks of every
    callback at every step, about 10 us per callback here.
    """

    def __init__(self, dirpath: Path, best: BestScore, every_n_train_steps: int | None = None) -> None:
        self.dirpath, self.best = dirpath, best
        self.best_path: Path | None = None
        self.validated = False  # this epoch: callback_metrics keeps older epochs' val metrics
        self.every_n_train_steps = every_n_train_steps
        self.saved_step = -1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.saved_step = trainer.global_step  # a resumed run does not save its first step again
        self.start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for it

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """`last.ckpt` every N optimizer steps (trainer.global_step counts steps, not batches)."""
        n, step = self.every_n_train_steps, trainer.global_step
        if not n or step % n or step == self.saved_step or trainer.fast_dev_run:
            return
        if may_save_mid_epoch(trainer, batch_idx):
            with trainer.strategy.checkpoint_io.timed():  # its cost: in train.log at the end
                trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)  # rank 0 writes
            self.saved_step = step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            seconds, metrics = time.perf_counter() - self.start, trainer.callback_metrics
            log.info(epoch_line(trainer.current_epoch + 1, trainer.max_epochs, metrics, seconds))
        validated, self.validated = self.validated, False
        if trainer.fast_dev_run:
            return  # like Lightning: no checkpoints in a smoke run
        best = None
        if validated and self.best.update(trainer.callback_metrics, trainer.current_epoch):
            self.best_path = best = self.dirpath / "best.ckpt"
        # Rank 0 writes last.ckpt and, when the score improved, best.ckpt: one file, two names.
        last = self.dirpath / "last.ckpt"
        with trainer.strategy.checkpoint_io.timed():
            trainer.save_checkpoint(last, weights_only=False, storage_options=copies(best))

    def state_dict(self) -> dict[str, Any]:
        return {**self.best.state_dict(), "best_path": str(self.best_path) if self.best_path else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best.load_state_dict(state_dict)
        self.best_path = Path(state_dict["best_path"]) if state_dict.get("best_path") else None
