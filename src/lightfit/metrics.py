"""Loss and accuracy per stage, accumulated on the device and computed once per epoch.

The three loops share these objects. `update` runs every step and never leaves the
device (no `.item()`: that would wait for the GPU each step); `compute` is called once
per epoch and, under DDP, syncs the metric states across ranks before reducing them, so
the result is that of one process over all samples, not a mean of per-rank means.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class StageMetrics(nn.Module):
    """`{stage}/loss` (mean over samples) and `{stage}/acc` for one stage: train, val or test."""

    def __init__(self, stage: str, num_classes: int) -> None:
        super().__init__()
        self.stage = stage
        # Labels were checked when the data were loaded; skipping the per-step checks keeps
        # update() cheap and free of host-device syncs.
        self.acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.loss = MeanMetric(nan_strategy="disable")

    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.acc.update(logits.detach(), y)  # detach: metrics must not keep the graph alive
        self.loss.update(loss.detach(), weight=len(y))  # weighted: the last batch may be short

    def compute(self) -> dict[str, Tensor]:
        return {f"{self.stage}/loss": self.loss.compute(), f"{self.stage}/acc": self.acc.compute()}

    def reset(self) -> None:
        self.acc.reset()
        self.loss.reset()
