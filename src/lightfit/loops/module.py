"""What the automatic and manual loops share: network, task (loss, metrics), optimizer, checkpoint data.

Only `training_step` differs between `AutomaticLoop` and `ManualLoop`; everything a
reader needs to compare them is in those two short files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightfit.run.resume import (
    EPOCH_KEY,
    RNG_KEY,
    epoch_position,
    restore_position,
    restore_rng_states,
    rng_states,
)
from lightfit.tasks import StageMetrics, Task, scalars

OptimizerFactory = Callable[..., Optimizer]  # params -> optimizer (a Hydra `_partial_` target)
SchedulerFactory = Callable[[Optimizer], LRScheduler]
CHECKPOINT_KEY = "lightfit"  # where a checkpoint keeps what it takes to rebuild the network


class TaskModule(L.LightningModule):
    """A network trained for a task (its loss), with the task's metrics per stage."""

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net, self.task = net, task
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        # Three attributes, not a ModuleDict: nn.Module already has a method called `train`.
        self.train_metrics = task.stage_metrics("train")
        self.val_metrics = task.stage_metrics("val")
        self.test_metrics = task.stage_metrics("test")
        self.run_config = run_config or {}
        self.tables: dict[str, Tensor] = {}  # the last non-scalar metrics (a confusion matrix)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch  # x: (B, *input_shape), y: (B,) labels or (B,) / (B, k) targets
        outputs = self(x)  # (B, num_classes) scores, or targets in the units of y
        loss = self.task.loss(outputs, y)
        self.stage_metrics(stage).update(outputs, y, loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "test")

    def stage_metrics(self, stage: str) -> StageMetrics:
        return getattr(self, f"{stage}_metrics")

    def is_last_batch(self, batch_idx: int) -> bool:
        return batch_idx + 1 >= self.trainer.num_training_batches

    # Metrics are logged once per epoch: logging every step would cost more than the
    # step itself on small networks. Train metrics are logged at the last batch so that
    # callbacks see them in their own on_train_epoch_end.
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_last_batch(batch_idx):
            # Before validation and before ModelCheckpoint: diverged weights are never saved.
            self.train_metrics.check_finite(self.current_epoch)
            self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        # compute() syncs metric states across ranks itself, so no sync_dist here.
        metrics = self.stage_metrics(stage)
        values = metrics.compute()
        self.log_dict(scalars(values), on_step=False, on_epoch=True)
        self.tables.update({k: v.cpu() for k, v in values.items() if v.ndim > 0})  # .cpu(): for the CSV
        metrics.reset()

    def configure_optimizers(self) -> Any:
        if self.make_optimizer is None:
            raise RuntimeError("this module was built for evaluation only (no optimizer)")
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.run_config
        checkpoint[RNG_KEY] = rng_states()  # dropout draws from these: needed for an exact resume
        # Batches trained in this epoch: `processed` counts the batch whose on_train_batch_end
        # is running (a step checkpoint, a stop); Lightning's own loop state restarts after it.
        trained = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        done = trained >= self.trainer.num_training_batches
        checkpoint[EPOCH_KEY] = epoch_position(self.current_epoch, trained, done, self.train_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if EPOCH_KEY in checkpoint:  # this rank's RNGs and, mid-epoch, its training metrics so far
            restore_position(checkpoint[EPOCH_KEY], self.global_rank, self.train_metrics)
        elif RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])
