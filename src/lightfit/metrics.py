"""Loss and accuracy per stage, accumulated on the device and computed once per epoch.

The three loops share these objects. `update` runs every step and never leaves the
device (no `.item()`: that would wait for the GPU each step); `compute` is called once
per epoch and, under DDP, syncs the metric states across ranks before reducing them, so
the result is that of one process over all samples, not a mean of per-rank means.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightfit.errors import LightfitError


class NonFiniteLoss(LightfitError):
    """The training loss became NaN or infinite; the run stops before writing a checkpoint."""

    exit_code = 1


class StageMetrics(nn.Module):
    """`{stage}/loss` (mean over samples) and `{stage}/acc` for one stage: train, val or test."""

    def __init__(self, stage: str, num_classes: int) -> None:
        super().__init__()
        self.stage = stage
        # Labels were checked when the data were loaded; skipping the per-step checks keeps
        # update() cheap and free of host-device syncs.
        self.acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.loss = MeanMetric(nan_strategy="disable")
        # The first batch of the epoch whose loss was NaN or infinite (-1: none), kept on the
        # device so that watching for divergence costs no host sync per step.
        self.register_buffer("batches", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("first_nonfinite", torch.full((), -1, dtype=torch.long), persistent=False)

    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        loss = loss.detach()  # detach: metrics must not keep the graph alive
        self.acc.update(logits.detach(), y)
        # The batch mean once per sample, so that a short last batch counts less. Not
        # `weight=len(y)`: under nan_strategy="disable" MeanMetric drops the weight
        # (torchmetrics issue 3434). expand() is a view: nothing is copied.
        self.loss.update(loss.expand(len(y)))
        first_bad = (self.first_nonfinite < 0) & ~torch.isfinite(loss)
        self.first_nonfinite = torch.where(first_bad, self.batches, self.first_nonfinite)
        self.batches += 1

    def check_finite(self, epoch: int) -> None:
        """Raise NonFiniteLoss if any loss this epoch was NaN or infinite (one sync per epoch)."""
        first = self.first_nonfinite.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)  # every rank stops
        if first.item() >= 0:
            raise NonFiniteLoss(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {first.item() + 1}; "
                "stopped before saving, so checkpoints/ still holds the last good epoch "
                "(try a lower optimizer.lr or loop.gradient_clip_val=1.0)"
            )

    def compute(self) -> dict[str, Tensor]:
        return {f"{self.stage}/loss": self.loss.compute(), f"{self.stage}/acc": self.acc.compute()}

    def reset(self) -> None:
        self.acc.reset()
        self.loss.reset()
        self.batches.zero_()
        self.first_nonfinite.fill_(-1)
