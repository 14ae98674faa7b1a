"""Automatic optimization: return the loss, Lightning does the rest.

Lightning calls zero_grad, backward (scaled by 1/accumulate_grad_batches), gradient
clipping (`Trainer(gradient_clip_val=...)`), optimizer.step and scheduler.step for you.
Compare with `manual.py`, which writes each of those out.
"""

from __future__ import annotations

from torch import Tensor

from lightfit.loops.module import TaskModule


class AutomaticLoop(TaskModule):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")
