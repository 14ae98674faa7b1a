"""Loss and accuracy per stage, accumulated on the device and computed once per epoch.

The three loops share these objects. `update` runs every step and never leaves the
device (no `.item()`: that would wait for the GPU each step); `compute` is called once
per epoch and, under DDP, sums the states (loss sum, correct count, sample count) across
ranks before dividing, so the result is that of one process over all samples, not a mean
of per-rank means.

The states are three sums rather than torchmetrics objects: torchmetrics' accuracy and
mean cost about three times as much per step (input checks, dtype dispatch, a state per
metric), as much as a small network's forward pass on the CPU. More metrics (F1,
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


class StageMetrics(nn.Module):
    """`{stage}/loss` (mean over samples) and `{stage}/acc` for one stage: train, val or test."""

    def __init__(self, stage: str, num_classes: int) -> None:
        super().__init__()
        self.stage, self.num_classes = stage, num_classes
        # Per batch of the epoch: the mean loss and the correct count, 0-d tensors on the
        # device, and the size, known on the host. Kept as lists and reduced at the epoch
        # end: each step then adds only the few operations of the accuracy, and a NaN can
        # still be traced to its batch.
        self.losses: list[Tensor] = []
        self.correct: list[Tensor] = []
        self.sizes: list[int] = []
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # where the sums go

    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        # Labels were checked when the data were loaded: nothing to validate per step.
        self.losses.append(loss.detach())  # detach: metrics must not keep the graph alive
        self.correct.append((logits.detach().argmax(dim=1) == y).sum())
        self.sizes.append(len(y))

    def check_finite(self, epoch: int) -> None:
        """Raise NonFiniteLoss if any loss this epoch was NaN or infinite (one sync per epoch)."""
        first = torch.tensor(-1, device=self.anchor.device)
        if self.losses:
            bad = ~torch.isfinite(torch.stack(self.losses))
            first = torch.where(bad.any(), bad.int().argmax(), first)  # argmax: the first True
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)  # every rank stops
        if first.item() >= 0:
            raise NonFiniteLoss(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {first.item() + 1}; "
                "stopped before saving, so checkpoints/ still holds the last good epoch "
                "(try a lower optimizer.lr or loop.gradient_clip_val=1.0)"
            )

    def compute(self) -> dict[str, Tensor]:
        # float64 holds counts exactly far beyond float32's 2**24 (Apple's MPS has no float64).
        device = self.anchor.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        sums = torch.zeros(3, dtype=dtype, device=device)
        if self.losses:
            sizes = torch.tensor(self.sizes, dtype=dtype, device=device)
            sums[0] = (torch.stack(self.losses).to(dtype) * sizes).sum()  # each batch mean times its size
            sums[1] = torch.stack(self.correct).sum()
            sums[2] = sum(self.sizes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # every rank's sums: the metric over all samples
        loss, acc = (sums[:2] / sums[2]).float()
        return {f"{self.stage}/loss": loss, f"{self.stage}/acc": acc}

    def reset(self) -> None:
        self.losses, self.correct, self.sizes = [], [], []
