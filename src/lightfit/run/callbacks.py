"""The one Lightning callback a run needs, for any LightningModule that keeps the contract.

`RunCallback` does what the explicit loop does in plain code (run_explicit.py): the stage
metrics computed and logged once per epoch, the finite-loss check, the epoch line, best and
last checkpoints (and every N optimizer steps), the run's state in every checkpoint and its
restore on resume, and the stop on a signal. So a module stays a plain `L.LightningModule`:
network, task, `train_metrics` / `val_metrics` / `test_metrics`, its steps and its optimizers
(`lightfit.contract.TrainingModule`). One callback, not several, and of its per-batch hooks
only `on_train_batch_end` is called at each step (run/batch_hooks.py): Lightning would
call six hooks of every callback at every step, about 2 us each here.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Checkpoint
from torch import Tensor

from lightfit.run.batch_hooks import only_batch_hooks_it_has
from lightfit.run.best import BestScore
from lightfit.run.checkpoint import CHECKPOINT_KEY
from lightfit.run.checkpoint_io import copies
from lightfit.run.console import epoch_line, step_limit
from lightfit.run.early_stopping import EarlyStopping
from lightfit.run.resume import (
    BEST,
    EPOCH_KEY,
    INTERRUPTED,
    RNG_KEY,
    epoch_position,
    restore_position,
    restore_rng_states,
    rng_states,
)
from lightfit.run.schedule import monitored
from lightfit.run.signals import StopRequest
from lightfit.tasks import scalars

log = logging.getLogger("lightfit")
# What a ReduceLROnPlateau's `frequency` becomes when RunCallback steps it: Lightning steps an
# epoch scheduler when the epoch count (from 1) is a multiple of it, never for this one (see
# RunCallback.take_plateau_steps). Its interval stays "epoch": Lightning's LearningRateMonitor
# chooses the schedulers it logs by interval.
STEPPED_BY_RUN = sys.maxsize


class StopRequested(Exception):
    """Raised at a batch end after a Ctrl-C, to leave `trainer.fit` through its error path."""


@only_batch_hooks_it_has  # Lightning then calls its on_train_batch_end only, at each step
class RunCallback(Checkpoint):
    """A run's machinery around a LightningModule. Without `checkpoints` (evaluation only) it
    only computes and logs the stage metrics.

    Each epoch end: the epoch line (rank 0), then `best.ckpt` when the monitored metric
    improves (ties: see BestScore) and `last.ckpt`, after validation, as ModelCheckpoint
    does by default; with `every_n_train_steps`, `last.ckpt` every N optimizer steps too. A
    `Checkpoint` subclass, so Lightning runs it after the other callbacks. Its state (the best
    score) travels in every checkpoint, so a resumed run keeps it.

    Stops: Lightning installs its own SIGTERM handler when training starts. Under DDP that
    handler broadcasts from inside the signal handler, in the middle of whatever collective
    the rank was in, and the ranks can wait on each other until the launcher kills them
    (Lightning issue 20806). So SIGTERM is taken back here, like Ctrl-C it only sets a
    flag, and the ranks agree at each batch end (`StopRequest.agreed`): all of them stop
    at the same batch, and all of them take part in saving `interrupted.ckpt`.

    ReduceLROnPlateau (automatic optimization): Lightning steps an epoch's plateau scheduler
    after every `on_train_epoch_end`, so after `last.ckpt` is written: the file would hold the
    scheduler and learning rate one step behind, and a resume from it never takes that step
    (nor, resumed inside an epoch, the step at that epoch's end: Lightning skips it while its
    loop restarts). This callback takes those steps instead, just before the epoch's
    checkpoint, where the manual loop takes them (its `on_train_epoch_end`, which Lightning
    calls before a Checkpoint's), so a checkpoint holds the state after the epoch's step.
    """

    def __init__(
        self,
        checkpoints: Path | None = None,
        best: BestScore | None = None,
        *,
        every_n_train_steps: int | None = None,
        stop: StopRequest | None = None,
        run_config: dict[str, Any] | None = None,
        keeps_best: bool = True,
    ) -> None:
        self.dirpath, self.best, self.stop = checkpoints, best, stop
        self.keeps_best = keeps_best  # a resumed best score has its weights in this run's best.ckpt
        self.every_n_train_steps = every_n_train_steps
        self.run_config = run_config or {}  # what rebuilds the network: in every checkpoint
        self.best_path: Path | None = None
        self.tables: dict[str, Tensor] = {}  # the last non-scalar metrics (a confusion matrix)
        self.validated = False  # this epoch: callback_metrics keeps older epochs' val metrics
        self.saved_step = -1
        self.plateaus: list[tuple[Any, int]] = []  # the ReduceLROnPlateau configs this callback steps
        self.where, self.saved = "", None  # where a stop happened, and its checkpoint

    # Metrics are logged once per epoch: logging every step would cost more than the step
    # itself on small networks. Train metrics are logged at the last batch, so that they are
    # in callback_metrics when the epoch ends.
    def log_stage(self, pl_module: Any, stage: str) -> None:
        metrics = getattr(pl_module, f"{stage}_metrics")
        values = metrics.compute()  # syncs metric states across ranks itself: no sync_dist
        pl_module.log_dict(scalars(values), on_step=False, on_epoch=True)
        self.tables.update({k: v.cpu() for k, v in values.items() if v.ndim > 0})  # .cpu(): for the CSV
        metrics.reset()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.log_stage(pl_module, "val")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.log_stage(pl_module, "test")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.stop is not None:
            self.stop.reclaim_sigterm()  # Lightning registered its handler just before this hook
        self.saved_step = trainer.global_step  # a resumed run does not save its first step again
        self.plateaus = self.take_plateau_steps(trainer, pl_module)
        self.start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for it
        self.per_epoch(trainer)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()
        self.per_epoch(trainer)

    def per_epoch(self, trainer: Any) -> None:
        """What every batch end would otherwise look up: the epoch's last batch, and whether a
        batch end before it can have anything to do (a step checkpoint, DDP ranks to agree)."""
        self.last_batch = trainer.num_training_batches - 1
        self.train_logged = False  # at the epoch's last batch; max_steps or max_time may end it before
        self.quiet = self.dirpath is None or (not self.every_n_train_steps and trainer.world_size == 1)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        quiet = self.quiet and (self.stop is None or self.stop.signum is None) and not trainer.should_stop
        if batch_idx < self.last_batch and quiet and trainer.global_step != trainer.max_steps:
            return  # most steps: a few comparisons, not the checks below (~470 steps an epoch)
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's last batch
            # Before validation and before any checkpoint: diverged weights are never saved.
            pl_module.train_metrics.check_finite(trainer.current_epoch)
            self.log_stage(pl_module, "train")
            self.train_logged = True
            return
        if self.dirpath is None or not may_save_mid_epoch(trainer, batch_idx):
            return  # the same batches on every rank: the ranks' exchanges stay in step
        if self.stop is not None and self.stop.agreed(trainer.world_size > 1):
            raise StopRequested(self.stop.signum)  # Lightning calls on_exception, then re-raises
        # last.ckpt every N optimizer steps (trainer.global_step counts steps, not batches), and
        # where max_steps or max_time end the run inside an epoch: a resume continues there
        # (a checkpoint at the epoch's end would resume at the next epoch).
        n, step = self.every_n_train_steps, trainer.global_step
        ends = step == trainer.max_steps or (
            trainer.should_stop and trainer.current_epoch >= (trainer.min_epochs or 0)
        )
        if (ends or (n and step % n == 0)) and step != self.saved_step and not trainer.fast_dev_run:
            with trainer.strategy.checkpoint_io.timed():  # its cost: in train.log at the end
                trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)  # rank 0 writes
            self.saved_step = step

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, StopRequested):
            return  # a real error, not a stop: nothing to save
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.completed + 1  # counted after this hook
        self.where = f"epoch {trainer.current_epoch + 1}, batch {batch}"
        path = self.dirpath / INTERRUPTED
        trainer.save_checkpoint(path, weights_only=False)  # every rank: rank 0 writes, all wait
        self.saved = path

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.validated = not trainer.sanity_checking

    def take_plateau_steps(self, trainer: Any, pl_module: Any) -> list[tuple[Any, int]]:
        """The automatic loop's epoch-interval ReduceLROnPlateau configs and their frequencies,
        which this callback steps from now on (`step_plateaus`); Lightning no longer does, their
        frequency set to STEPPED_BY_RUN."""
        if not pl_module.automatic_optimization:
            return []  # manual optimization steps its own schedulers (loops/manual.py)
        configs = trainer.lr_scheduler_configs
        taken = [(c, c.frequency) for c in configs if c.reduce_on_plateau and c.interval == "epoch"]
        for config, _ in taken:
            config.frequency = STEPPED_BY_RUN
        return taken

    def step_plateaus(self, trainer: Any, pl_module: Any) -> None:
        """What Lightning's loop would do after this hook (`_update_learning_rates`): every
        `frequency` epochs, once the epoch's batches all ran, each plateau steps on its monitor."""
        epoch = trainer.current_epoch
        if not self.train_logged:
            return  # max_steps or max_time ended the epoch early: no epoch step, as in Lightning
        for config, frequency in self.plateaus:
            if (epoch + 1) % frequency == 0:
                metric = monitored(trainer.callback_metrics, config.monitor, epoch)
                pl_module.lr_scheduler_step(config.scheduler, metric)  # a module may override this hook

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_logged:  # an epoch that max_steps or max_time ended early: its batches so far
            pl_module.train_metrics.check_finite(trainer.current_epoch)
            self.log_stage(pl_module, "train")
        self.step_plateaus(trainer, pl_module)  # before last.ckpt, which holds the stepped state
        if trainer.is_global_zero:
            seconds, epoch = time.perf_counter() - self.start, trainer.current_epoch
            # callbacks=early_stopping decided before this hook (a Checkpoint's hooks run last)
            stopping = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
            notes = [c.reason() for c in stopping if c.stopped_epoch == epoch]
            note = "  ".join(notes + step_limit(trainer.global_step, trainer.max_steps))
            log.info(epoch_line(epoch + 1, trainer.max_epochs, trainer.callback_metrics, seconds, note))
        validated, self.validated = self.validated, False
        if trainer.fast_dev_run or self.dirpath is None:
            return  # like Lightning: no checkpoints in a smoke run
        best = None
        if validated and self.best.update(trainer.callback_metrics, trainer.current_epoch):
            self.best_path = best = self.dirpath / BEST
        if not self.train_logged and self.saved_step == trainer.global_step:
            # max_steps or max_time ended the epoch early: last.ckpt was written at its last batch
            if best is not None:
                with trainer.strategy.checkpoint_io.timed():
                    trainer.save_checkpoint(best, weights_only=False)
            return
        # Rank 0 writes last.ckpt and, when the score improved, best.ckpt: one file, two names.
        last = self.dirpath / "last.ckpt"
        with trainer.strategy.checkpoint_io.timed():
            trainer.save_checkpoint(last, weights_only=False, storage_options=copies(best))

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.run_config
        checkpoint[RNG_KEY] = rng_states()  # dropout draws from these: needed for an exact resume
        # Batches trained in this epoch: `processed` counts the batch whose on_train_batch_end
        # is running (a step checkpoint, a stop); Lightning's own loop state restarts after it.
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        done = trained >= trainer.num_training_batches
        checkpoint[EPOCH_KEY] = epoch_position(trainer.current_epoch, trained, done, pl_module.train_metrics)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if EPOCH_KEY in checkpoint:  # this rank's RNGs and, mid-epoch, its training metrics so far
            restore_position(checkpoint[EPOCH_KEY], trainer.global_rank, pl_module.train_metrics)
        elif RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])

    def state_dict(self) -> dict[str, Any]:
        if self.best is None:
            return {}
        return {**self.best.state_dict(), "best_path": str(self.best_path) if self.best_path else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The best weights are this run's own best.ckpt: a checkpoint of another run directory
        # had them copied here, or its score is dropped (same_run.adopt_best). Never the path
        # stored in the state, which may lie in the run directory that wrote it.
        if self.best is None or not self.keeps_best or state_dict.get("score") is None:
            return
        self.best.load_state_dict(state_dict)
        self.best_path = self.dirpath / BEST


def may_save_mid_epoch(trainer: Any, batch_idx: int) -> bool:
    """Whether a checkpoint at this batch end resumes exactly: right after an optimizer step
    (nothing accumulated would be lost) and not at the epoch's last batch (that state is saved
    by the epoch end, after validation, which a restart here would skip)."""
    if batch_idx + 1 >= trainer.num_training_batches:
        return False
    accumulate = getattr(trainer.lightning_module, "accumulate_grad_batches", trainer.accumulate_grad_batches)
    return (batch_idx + 1) % accumulate == 0
