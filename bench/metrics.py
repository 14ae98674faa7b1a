"""The metrics case: what lightfit's metrics cost per training step, next to hand-written sums.

Each variant is fed one epoch of steps of the workload's shape (its batch size and class
count; random outputs, targets and losses made beforehand, on the device), then computed
and reset, as a training epoch does: the per-step cost includes the folds into torchmetrics
and the epoch's `compute`. The reference is what lightfit had before torchmetrics
(`git show b75364b:src/lightfit/metrics.py`): the loss times the batch size and the count
of correct argmaxes appended per step, summed on the device every 256 batches.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import Tensor

from bench.workloads import Workload, device, sync
from lightfit.tasks import Task

# name -> (task, task.metrics; None: the task's defaults)
VARIANTS: dict[str, tuple[str, list[str] | None]] = {
    "classification default [acc]": ("classification", None),
    "classification [acc,f1,auroc]": ("classification", ["acc", "f1", "auroc"]),
    "regression default [mae,rmse,r2]": ("regression", None),
}
REFERENCE = "hand-written sums (loss, accuracy)"
MIN_EPOCHS = 11  # the case is cheap: at least 10 timed epochs after the warm-up


class HandSums:
    """The reference: lightfit's loss and accuracy sums before torchmetrics (one process)."""

    FOLD = 256

    def __init__(self, dev: torch.device) -> None:
        self.zero = torch.zeros((), device=dev)
        self.reset()

    def update(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.losses.append(loss.detach() * len(y))
        self.correct.append((logits.detach().argmax(dim=1) == y).sum())
        self.samples += len(y)
        if len(self.losses) == self.FOLD:
            self._fold()

    def _fold(self) -> None:
        if self.losses:
            losses = torch.stack(self.losses)
            self.any_bad = self.any_bad | ~torch.isfinite(losses).all()  # the NaN check, on the device
            self.loss_sum = self.loss_sum + losses.sum()
            self.correct_sum = self.correct_sum + torch.stack(self.correct).sum()
            self.losses, self.correct = [], []

    def compute(self) -> dict[str, Tensor]:
        self._fold()
        return {"loss": self.loss_sum / self.samples, "acc": self.correct_sum / self.samples}

    def reset(self) -> None:
        self.losses: list[Tensor] = []
        self.correct: list[Tensor] = []
        self.samples = 0
        self.loss_sum, self.correct_sum, self.any_bad = self.zero, self.zero.long(), self.zero.bool()


def fake_steps(task: str, w: Workload, dev: torch.device) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(outputs, targets, loss) for each step of an epoch of `w`: a network's shapes and dtypes."""
    generator = torch.Generator().manual_seed(0)
    sizes = [min(w.batch_size, w.train_samples - i) for i in range(0, w.train_samples, w.batch_size)]
    classes = w.datamodule.num_outputs
    steps = []
    for n in sizes:
        if task == "classification":  # (B, C) scores, (B,) labels
            outputs, y = torch.randn(n, classes, generator=generator), torch.randint(classes, (n,))
        else:  # (B, 1) values against (B,) targets, as a one-target network answers
            outputs, y = torch.randn(n, 1, generator=generator), torch.randn(n, generator=generator)
        steps.append((outputs.to(dev), y.to(dev), torch.rand((), generator=generator).to(dev)))
    return steps


def epoch_seconds(metrics: Any, steps: list[tuple[Tensor, Tensor, Tensor]], dev: torch.device) -> float:
    """One epoch's updates, then compute and reset, as the loops do them."""
    start = time.perf_counter()
    for outputs, y, loss in steps:
        metrics.update(outputs, y, loss)
    metrics.compute()
    metrics.reset()
    sync(dev)
    return time.perf_counter() - start


def case_metrics(w: Workload) -> dict[str, Any]:
    """Microseconds per training step of each variant; the variants take turns, epoch by epoch."""
    dev = device()
    fed = {REFERENCE: (HandSums(dev), fake_steps("classification", w, dev))}
    for name, (task, names) in VARIANTS.items():
        num_outputs = w.datamodule.num_outputs if task == "classification" else 1
        metrics = Task(task, metrics=names, num_outputs=num_outputs).stage_metrics("train").to(dev)
        fed[name] = (metrics, fake_steps(task, w, dev))
    seconds: dict[str, list[float]] = {name: [] for name in fed}
    for _ in range(max(w.epochs, MIN_EPOCHS)):
        for name, (metrics, steps) in fed.items():
            seconds[name].append(epoch_seconds(metrics, steps, dev))
    steps = w.steps_per_epoch
    return {
        "steps_per_epoch": steps,
        "batch_size": w.batch_size,
        "num_classes": w.datamodule.num_outputs,
        "reference": REFERENCE,
        "us_per_step": {name: statistics.median(s[1:]) / steps * 1e6 for name, s in seconds.items()},
        "epochs": seconds,
    }
