"""Manual optimization: the same training as `automatic.py`, every step written out.

Each line marked `# auto:` is one that Lightning's automatic loop does for you. The
result is the same weights, bit for bit, on CPU with the same seed (tests check it).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightfit.loops.module import OptimizerFactory, SchedulerFactory, TaskModule
from lightfit.tasks import Task


class ManualLoop(TaskModule):
    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        accumulate_grad_batches: int = 1,  # auto: Trainer(accumulate_grad_batches=...)
        gradient_clip_val: float | None = None,  # auto: Trainer(gradient_clip_val=...)
    ) -> None:
        super().__init__(net, task, optimizer, scheduler)
        self.automatic_optimization = False  # we call zero_grad, backward and step ourselves
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()  # the LightningOptimizer around configure_optimizers' optimizer
        last = self.is_last_batch(batch_idx)
        # auto: step every k batches, and at the end of the epoch whatever is accumulated.
        step_now = (batch_idx + 1) % self.accumulate_grad_batches == 0 or last
        # auto: under DDP, skip the gradient all-reduce on accumulating steps. The forward
        # pass must be inside the context too, or DDP syncs anyway.
        with optimizer.toggle_model(sync_grad=step_now):
            loss = self._common_step(batch, "train")
            # auto: backward through Lightning (precision scaling, DDP hooks), loss / k
            # (skipped for k = 1: x / 1 is x, bit for bit, and a graph node less per step).
            k = self.accumulate_grad_batches
            self.manual_backward(loss / k if k > 1 else loss)
        if step_now:
            # Clipping happens in on_before_optimizer_step below, inside this call.
            optimizer.step()  # auto: also counts trainer.global_step (optimizer steps, not batches)
            optimizer.zero_grad()  # auto: Lightning zeroes before the first backward of a window
        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau):
            config = self.trainer.lr_scheduler_configs[0]  # configure_optimizers' lr_scheduler dict
            if step_now and config.interval == "step" and (batch_idx + 1) % config.frequency == 0:
                scheduler.step()  # auto: interval="step" schedulers step after the optimizer
            if last and config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                scheduler.step()  # auto: interval="epoch" schedulers step once per epoch
        return loss

    def on_train_epoch_end(self) -> None:
        # auto: a ReduceLROnPlateau steps at the epoch's end, after validation, on its monitor.
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, ReduceLROnPlateau):
            config, schedule = self.trainer.lr_scheduler_configs[0], self.make_scheduler
            if (self.current_epoch + 1) % config.frequency == 0:
                scheduler.step(self.trainer.callback_metrics[schedule.monitor])

    def on_validation_model_zero_grad(self) -> None:
        """Keep the gradients of a window that a mid-epoch validation interrupts.

        auto: Lightning frees the gradients before validating only where a window ends, and
        counts windows with Trainer(accumulate_grad_batches), which is 1 here: its default
        (`self.zero_grad()`) would drop the batches accumulated so far, and the window would
        step on the rest alone. training_step's zero_grad already frees them after each step.
        """

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # auto: Trainer(gradient_clip_val=...). Lightning calls this hook inside
        # optimizer.step(), after 16-bit AMP has unscaled the gradients; clipping before
        # optimizer.step() would clip the scaled gradients instead.
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )
