"""What the automatic and manual loops share: network, loss, metrics, optimizer, checkpoint data.

Only `training_step` differs between `AutomaticLoop` and `ManualLoop`; everything a
reader needs to compare them is in those two short files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightfit.metrics import StageMetrics
from lightfit.resume import RNG_KEY, restore_rng_states, rng_states

OptimizerFactory = Callable[..., Optimizer]  # params -> optimizer (a Hydra `_partial_` target)
SchedulerFactory = Callable[[Optimizer], LRScheduler]
CHECKPOINT_KEY = "lightfit"  # where a checkpoint keeps what it takes to rebuild the network


class Classifier(L.LightningModule):
    """A network trained with cross-entropy, with loss and accuracy per stage."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        # Three attributes, not a ModuleDict: nn.Module already has a method called `train`.
        self.train_metrics = StageMetrics("train", num_classes)
        self.val_metrics = StageMetrics("val", num_classes)
        self.test_metrics = StageMetrics("test", num_classes)
        self.run_config = run_config or {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch  # x: (B, *input_shape), y: (B,)
        logits = self(x)  # (B, num_classes)
        loss = F.cross_entropy(logits, y)
        self.stage_metrics(stage).update(logits, y, loss)
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
        self.log_dict(metrics.compute(), on_step=False, on_epoch=True)
        metrics.reset()

    def configure_optimizers(self) -> Any:
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])
