"""What the automatic and manual loops share: network, task (loss, metrics), optimizer.

Only `training_step` differs between `AutomaticLoop` and `ManualLoop`; everything a
reader needs to compare them is in those two short files. The run's machinery (metrics
logged once per epoch, checkpoints, exact resume, stops) is lightfit's callback
(run/callbacks.py), the same for any LightningModule that keeps `lightfit.contract`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightfit.run.checkpoint import load_module
from lightfit.run.schedule import Schedule
from lightfit.tasks import StageMetrics, Task

OptimizerFactory = Callable[..., Optimizer]  # params -> optimizer (a Hydra `_partial_` target)
SchedulerFactory = Callable[[Optimizer], LRScheduler]  # or a Schedule (run/schedule.py)


class TaskModule(L.LightningModule):
    """A network trained for a task (its loss), with the task's metrics per stage."""

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.net, self.task = net, task
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        # Three attributes, not a ModuleDict: nn.Module already has a method called `train`.
        # Fed on the device at every step; lightfit's callback computes and logs them per epoch.
        self.train_metrics = task.stage_metrics("train")
        self.val_metrics = task.stage_metrics("val")
        self.test_metrics = task.stage_metrics("test")

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> TaskModule:
        """The trained module from its checkpoint alone, in eval mode; `kwargs` go to `__init__`.

        Lightning's version calls `cls(**saved hyperparameters)`; the network and the task are
        objects a weights-only checkpoint cannot hold, so they are rebuilt from the run's config
        that lightfit stores in it (run/checkpoint.py, `load_module`).
        """
        return load_module(cls, checkpoint_path, map_location, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _common_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch  # x: (B, *input_shape), y: (B,) labels or (B,) / (B, k) targets
        # self.net(x), not self(x): the same forward, one module call less per step (~5 us)
        outputs = self.net(x)  # (B, num_classes) scores, or targets in the units of y
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

    def configure_optimizers(self) -> Any:
        if self.make_optimizer is None:
            raise RuntimeError("this module was built for evaluation only (no optimizer)")
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        if isinstance(self.make_scheduler, Schedule):  # a config's: its interval, frequency, monitor
            # The run's length (OneCycleLR) from the data module, as the explicit loop counts it;
            # not trainer.estimated_stepping_batches, which drops the loader's resume state.
            batches = len(self.trainer.datamodule.train_dataloader())
            scheduler = self.make_scheduler.build(optimizer, batches)
            config = self.make_scheduler.lightning(scheduler)
            if not self.automatic_optimization:  # manual.py steps a ReduceLROnPlateau on its monitor
                config.pop("monitor", None)
            return {"optimizer": optimizer, "lr_scheduler": config}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "epoch"},
        }
