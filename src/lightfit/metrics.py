"""Loss and accuracy per stage, accumulated on the device and computed once per epoch.

The three loops share these objects. `update` runs every step and never leaves the
device (no `.item()`: that would wait for the GPU each step); `compute` is called once
per epoch and, under DDP, sums the states (loss sum, correct count, sample count) across
ranks before dividing, so the result is that of one process over all samples, not a mean
of per-rank means.

The states are plain sums rather than torchmetrics objects: torchmetrics' accuracy and
mean took 127 us per step on a 2-core CPU (input checks, dtype dispatch, a state per
metric), these sums under 20 us, where a small network's whole step takes 1 ms. More metrics (F1,
confusion matrix) are a torchmetrics object away: update it in `update`, compute it in
`compute`; it syncs across ranks by itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightfit.errors import LightfitError


class NonFiniteLoss(LightfitError):
    """The training loss became NaN or infinite; the run stops before writing a checkpoint."""

    exit_code = 1


FOLD = 256  # batches kept per stage before they are summed on the device
NO_BATCH = 2**62  # first_bad while every loss was finite (a min over ranks keeps real batches)


class StageMetrics(nn.Module):
    """`{stage}/loss` (mean over samples) and `{stage}/acc` for one stage: train, val or test."""

    def __init__(self, stage: str, num_classes: int) -> None:
        super().__init__()
        # num_classes: unused by loss and accuracy; kept for metrics that need it (F1, confusion matrix).
        self.stage, self.num_classes = stage, num_classes
        # Per batch, 0-d tensors on the device: the loss times the batch size (so that a
        # short last batch counts for its size) and the correct count. Every FOLD batches
        # they are added to the sums below, still on the device, so that memory stays flat.
        self.losses: list[Tensor] = []
        self.correct: list[Tensor] = []
        self.samples = 0  # known on the host: len(y) needs no sync
        self.folded = 0  # batches already added to the sums
        self.register_buffer("loss_sum", torch.zeros(()), persistent=False)
        self.register_buffer("correct_sum", torch.zeros((), dtype=torch.long), persistent=False)
        # The first batch whose loss was NaN or infinite; NO_BATCH while there is none.
        self.register_buffer("first_bad", torch.tensor(NO_BATCH), persistent=False)

    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        # Labels were checked when the data were loaded: nothing to validate per step.
        self.losses.append(loss.detach() * len(y))  # detach: metrics must not keep the graph alive
        self.correct.append((logits.detach().argmax(dim=1) == y).sum())
        self.samples += len(y)
        if len(self.losses) == FOLD:
            self._fold()

    def _fold(self) -> None:
        """Add the batches kept so far to the sums, on the device: no sync."""
        if not self.losses:
            return
        losses = torch.stack(self.losses)
        bad = ~torch.isfinite(losses)
        here = torch.where(bad.any(), bad.int().argmax() + self.folded, NO_BATCH)  # argmax: first True
        self.first_bad = torch.minimum(self.first_bad, here)
        self.loss_sum += losses.sum()
        self.correct_sum += torch.stack(self.correct).sum()
        self.folded += len(self.losses)
        self.losses, self.correct = [], []

    def check_finite(self, epoch: int) -> None:
        """Raise NonFiniteLoss if any loss this epoch was NaN or infinite (one sync per epoch)."""
        self._fold()
        first = self.first_bad.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)  # every rank stops
        if first.item() != NO_BATCH:
            raise NonFiniteLoss(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {first.item() + 1}; "
                "stopped before saving, so checkpoints/ still holds the last good epoch "
                "(try a lower optimizer.lr or loop.gradient_clip_val=1.0)"
            )

    def compute(self) -> dict[str, Tensor]:
        self._fold()
        loss_sum, correct, samples = self.loss_sum, self.correct_sum, self.samples
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank's sums: the metric over all samples. float64 keeps counts exact.
            sums = torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(samples).double()])
            torch.distributed.all_reduce(sums)
            loss_sum, correct, samples = sums
        return {
            f"{self.stage}/loss": (loss_sum / samples).float(),
            f"{self.stage}/acc": (correct / samples).float(),
        }

    def reset(self) -> None:
        self.losses, self.correct = [], []
        self.samples = self.folded = 0
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        self.first_bad.fill_(NO_BATCH)
