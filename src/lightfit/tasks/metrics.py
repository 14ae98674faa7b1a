"""Metrics by name through torchmetrics, fed once every few batches, exact under DDP.

`task.metrics=[acc,f1,auroc]` picks torchmetrics classes from the tables below; a YAML
entry may also be any torchmetrics class given by `_target_` (with an optional `name`).
Classification metrics are multiclass; f1, precision, recall and auroc average over
classes with `task.average` (macro unless configured otherwise; with two classes `binary`
scores label 1 alone, binary.py); acc is the fraction classified correctly, as in Keras.

Why the batches are folded: a torchmetrics `update` costs about 50 us a call on a 2-core
CPU (input checks, dtype dispatch), where a small network's whole step takes about 1 ms, and
one update over many concatenated batches costs about what one batch does. So
`StageMetrics.update` only appends the step's loss, outputs and targets (on the device: no
copy, no sync) to lists, and every FOLD batches `_fold` hands them to the metrics at once.
The loss is summed by hand (loss x batch size): torchmetrics' MeanMetric checks for NaN on
the host at every update, a sync per step on a GPU. In a run of workload (b): 6 us a step
in `update`, 1.2 ms a fold of 256 batches; 6.5 ms an epoch in all (17 ms with FOLD=64).

Under DDP, `compute` sums the loss across ranks and each torchmetrics object syncs its own
states (sums, or gathered predictions for auroc): the result is that of one process over
all samples. The data module gives every sample to exactly one rank, nothing padded, so
nothing is counted twice.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import Tensor, nn

from lightfit.errors import LightfitError
from lightfit.tasks.binary import binary_metric

CLASSIFICATION, REGRESSION = "classification", "regression"
_CLS = "classification."
# name -> (torchmetrics class, as torchmetrics.<this>; fixed arguments; higher is better)
METRICS: dict[str, dict[str, tuple[str, dict[str, Any], bool]]] = {
    CLASSIFICATION: {
        "acc": (_CLS + "MulticlassAccuracy", {"average": "micro"}, True),
        "f1": (_CLS + "MulticlassF1Score", {}, True),
        "precision": (_CLS + "MulticlassPrecision", {}, True),
        "recall": (_CLS + "MulticlassRecall", {}, True),
        "auroc": (_CLS + "MulticlassAUROC", {}, True),
        "confusion": (_CLS + "MulticlassConfusionMatrix", {}, True),
    },
    REGRESSION: {
        "mae": ("MeanAbsoluteError", {}, False),
        "mse": ("MeanSquaredError", {}, False),
        "rmse": ("MeanSquaredError", {"squared": False}, False),
        "r2": ("R2Score", {}, True),
        "mape": ("MeanAbsolutePercentageError", {}, False),
    },
}
AVERAGED = ("f1", "precision", "recall", "auroc")  # these take task.average
AVERAGES = ("macro", "micro", "weighted", "binary")  # binary: two classes, label 1's (binary.py)
FOLD = 256  # batches kept per stage before the metrics are updated with all of them at once
FOLD_BYTES = 32 * 2**20  # ... or fewer, when their outputs take more memory than this
NO_BATCH = 2**62  # first_bad while every loss was finite (a min over ranks keeps real batches)


def valid_names(task: str) -> str:
    return ", ".join(sorted(METRICS[task]))


def metric_name(entry: Any) -> str:
    """`acc` for "acc"; `name`, else the class name in lower case, for a `_target_` entry."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and "_target_" in entry:
        return str(entry.get("name") or str(entry["_target_"]).rsplit(".", 1)[-1].lower())
    raise LightfitError(f"task.metrics entry {entry!r} is neither a metric name nor a _target_ mapping")


def check_metric(task: str, entry: Any) -> None:
    """One line for an unknown name, or a name that belongs to the other task."""
    if not isinstance(entry, str):
        metric_name(entry)  # raises for anything but a _target_ mapping
        return
    if entry in METRICS[task]:
        return
    other = REGRESSION if task == CLASSIFICATION else CLASSIFICATION
    if entry in METRICS[other]:
        raise LightfitError(
            f"task.metrics: '{entry}' is a {other} metric; task={task} offers {valid_names(task)}"
        )
    raise LightfitError(
        f"task.metrics: unknown metric '{entry}' for task={task}; valid names: {valid_names(task)} "
        "(or an entry with _target_: a torchmetrics class)"
    )


def higher_is_better(task: str, entry: Any) -> bool | None:
    """The direction of a metric: from the table, or the torchmetrics class's own attribute."""
    if isinstance(entry, str):
        return METRICS[task][entry][2]
    from hydra.utils import get_class

    return getattr(get_class(entry["_target_"]), "higher_is_better", None)


def build_metric(task: str, entry: Any, num_outputs: int, average: str) -> nn.Module:
    """A torchmetrics object for one `task.metrics` entry."""
    import torchmetrics  # here, not at the top: a config check must not wait for it (nor scipy)
    from hydra.utils import get_class, instantiate

    if isinstance(entry, str) and entry in AVERAGED and average == "binary":
        return binary_metric(entry, num_outputs)
    if isinstance(entry, str):
        target, fixed, _ = METRICS[task][entry]
        kwargs = dict(fixed)
        if entry in AVERAGED:
            kwargs["average"] = average
        cls = operator.attrgetter(target)(torchmetrics)
    else:
        kwargs = {k: v for k, v in entry.items() if k not in ("_target_", "name")}
        cls = get_class(entry["_target_"])
    accepted = inspect.signature(cls).parameters
    if task == CLASSIFICATION:
        kwargs.setdefault("num_classes", num_outputs)
        if "validate_args" in accepted:
            kwargs.setdefault("validate_args", False)  # labels were checked once, when the data loaded
    try:
        if isinstance(entry, str):
            return cls(**kwargs)
        return instantiate({"_target_": entry["_target_"], **kwargs})
    except Exception as exc:  # noqa: BLE001 - a wrong argument in the user's metric config
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LightfitError(f"task.metrics: cannot build '{metric_name(entry)}': {reason}") from None


class StageMetrics(nn.Module):
    """`{stage}/loss` (mean over samples) and `{stage}/{name}` for each metric of one stage."""

    def __init__(
        self, stage: str, metrics: dict[str, nn.Module] | None = None, float64: bool = False
    ) -> None:
        super().__init__()
        self.stage = stage
        self.metrics = nn.ModuleDict(metrics or {})
        # Regression: r2 computes sum(y^2) - (sum y)^2 / n, which float32 gets wrong when the
        # targets' mean is large next to their spread (torchmetrics #3077).
        self.float64 = float64
        # Per batch, the loss and batch size, outputs and targets not yet folded in. `update`
        # only appends (an nn.Module's __setattr__ costs about 1 us a call); `_fold` counts.
        self.losses: list[Tensor] = []
        self.sizes: list[int] = []
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.keeps_outputs = bool(metrics)
        self.fold_at = FOLD  # batches in this window: fewer when their outputs are large
        self.samples = 0  # in the folded batches; known on the host: len(y) needs no sync
        self.folded = 0  # batches already folded in
        self.register_buffer("loss_sum", torch.zeros(()), persistent=False)
        # The first batch whose loss was NaN or infinite; NO_BATCH while there is none.
        self.register_buffer("first_bad", torch.tensor(NO_BATCH), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> StageMetrics:
        # `.to(device)` moves the buffers; the kept batches (a restored mid-epoch state) go too.
        super()._apply(fn, recurse)
        self.losses, self.outputs, self.targets = (
            [fn(t) for t in kept] for kept in (self.losses, self.outputs, self.targets)
        )
        return self

    def to_float64(self) -> StageMetrics:
        if self.float64:
            for metric in self.metrics.values():
                metric.set_dtype(torch.float64)
        return self

    def update(self, outputs: Tensor, y: Tensor, loss: Tensor) -> None:
        # detach: metrics must not keep the graph alive. Nothing is validated or synced here.
        self.losses.append(loss.detach())  # weighted by its batch size at the fold: no op per step
        self.sizes.append(y.shape[0])
        if self.keeps_outputs:
            self.outputs.append(outputs.detach())
            self.targets.append(y)
            if len(self.outputs) == 1:  # a window's first batch sets its length
                self.fold_at = fold_length(outputs)
        if len(self.losses) >= self.fold_at:
            self._fold()

    def _fold(self) -> None:
        """Add the kept batches to the loss sum and the metrics, on the device: no sync."""
        if not self.losses:
            return
        self.samples += sum(self.sizes)
        losses = torch.stack(self.losses)
        bad = ~torch.isfinite(losses)
        here = torch.where(bad.any(), bad.int().argmax() + self.folded, NO_BATCH)  # argmax: first True
        self.first_bad = torch.minimum(self.first_bad, here)
        self.loss_sum += (losses * losses.new_tensor(self.sizes)).sum()  # the same products as per step
        if self.outputs:
            outputs, targets = torch.cat(self.outputs), torch.cat(self.targets)
            outputs = match_targets(outputs, targets)
            if self.float64:
                outputs, targets = outputs.double(), targets.double()
            for metric in self.metrics.values():
                metric.update(outputs, targets)
        self.folded += len(self.losses)
        self.losses, self.sizes, self.outputs, self.targets = [], [], [], []

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
        """Each metric over the epoch's samples, all ranks' (every rank calls it): 0-d, or tables."""
        self._fold()
        loss_sum, samples = self.loss_sum, self.samples
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # float64: exact counts
            sums = torch.stack([loss_sum.double(), loss_sum.new_tensor(samples).double()])
            torch.distributed.all_reduce(sums)
            loss_sum, samples = sums
        results = {f"{self.stage}/loss": (loss_sum / samples).float()}
        for name, metric in self.metrics.items():
            value = metric.compute()  # syncs its states across ranks itself
            results[f"{self.stage}/{name}"] = value.float() if value.is_floating_point() else value
        return results

    def epoch_state(self) -> dict[str, Any]:
        """The epoch so far, on the CPU, for a mid-epoch checkpoint. Kept batches too: a resumed
        run must fold at the same batches as one that never stopped (the same float sums)."""
        cpu = torch.device("cpu")
        weighted = [loss * n for loss, n in zip(self.losses, self.sizes, strict=True)]
        return {
            "losses": _moved(weighted, cpu), "outputs": _moved(self.outputs, cpu),
            "targets": _moved(self.targets, cpu),
            "samples": self.samples + sum(self.sizes), "folded": self.folded,  # samples: kept ones too
            "loss_sum": self.loss_sum.cpu(), "first_bad": self.first_bad.cpu(),
            "metrics": {
                name: {"states": {k: _moved(v, cpu) for k, v in metric.metric_state.items()}}
                for name, metric in self.metrics.items()
            },
        }  # fmt: skip

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        """Continue the epoch an `epoch_state` was taken in."""
        device = self.loss_sum.device
        self.losses, self.outputs, self.targets = (
            _moved(state[k], device) for k in ("losses", "outputs", "targets")
        )
        self.sizes = [1] * len(self.losses)  # saved weighted by their batch sizes
        # Kept batches count their samples when folded (here, 1 each); the window keeps its length.
        self.samples, self.folded = state["samples"] - len(self.losses), state["folded"]
        self.fold_at = fold_length(self.outputs[0]) if self.outputs else FOLD
        self.loss_sum.copy_(state["loss_sum"])
        self.first_bad.copy_(state["first_bad"])
        for name, metric in self.metrics.items():
            metric.reset()  # no cached result; the states are then those of the checkpoint
            for key, value in state["metrics"][name]["states"].items():
                setattr(metric, key, _moved(value, device))  # the states that add_state declared

    def reset(self) -> None:
        self.losses, self.sizes, self.outputs, self.targets = [], [], [], []
        self.samples = self.folded = 0
        self.loss_sum.zero_()
        self.first_bad.fill_(NO_BATCH)
        for metric in self.metrics.values():
            metric.reset()


def fold_length(outputs: Tensor) -> int:
    """Batches like this one in a window: FOLD, or fewer if their outputs pass FOLD_BYTES."""
    return max(1, min(FOLD, FOLD_BYTES // max(1, outputs.numel() * outputs.element_size())))


def _moved(value: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    """A tensor, or a list of them (a metric's gathered state), on `device`."""
    return value.to(device) if isinstance(value, Tensor) else [t.to(device) for t in value]


def match_targets(outputs: Tensor, y: Tensor) -> Tensor:
    """(N, 1) outputs against (N,) regression targets become (N,): a loss would broadcast to N x N."""
    if outputs.ndim == y.ndim + 1 and outputs.shape[-1] == 1 and y.is_floating_point():
        return outputs.squeeze(-1)
    return outputs


def scalars(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """The 0-d metrics (what loggers take); tables such as a confusion matrix are left out."""
    return {k: v for k, v in metrics.items() if v.ndim == 0}


class NonFiniteLoss(LightfitError):
    """The training loss became NaN or infinite; the run stops before writing a checkpoint."""

    exit_code = 1
