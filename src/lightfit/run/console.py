"""One line per epoch, as Keras `fit()` prints it; shared by all loops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STAGES = ("train", "val")


def _label(key: str) -> str:
    stage, name = key.split("/", 1)
    return name if stage == "train" else f"{stage}_{name}"  # Keras names: loss, acc, val_loss


def _value(key: str, value: Any) -> str:
    # a learning rate (callbacks=lr_monitor) in 4 significant digits: 0.0001 is not 0.0000
    return f"{float(value):.4g}" if key.startswith("train/lr") else f"{float(value):.4f}"


def epoch_line(
    epoch: int, max_epochs: int, metrics: Mapping[str, Any], seconds: float, note: str = ""
) -> str:
    """`epoch 3/20  loss 0.2010  acc 0.9412  val_loss 0.1633  val_acc 0.9538  0.4s`

    Every train/ and val/ metric, the loss first, the others in the order they were computed;
    then `note` (why training stops after this epoch: early stopping).
    """
    parts = [f"epoch {epoch}/{max_epochs}"]
    for stage in STAGES:
        keys = [k for k in metrics if k.startswith(f"{stage}/")]
        keys.sort(key=lambda k: not k.endswith("/loss"))  # stable: the loss, then the rest in order
        parts += [f"{_label(k)} {_value(k, metrics[k])}" for k in keys]
    parts.append(f"{seconds:.1f}s")
    if note:
        parts.append(note)
    return "  ".join(parts)


def step_limit(step: int, max_steps: int) -> list[str]:
    """The epoch line's note when `trainer.max_steps` ends training at this epoch, the same in
    every loop: without it, the run ends at `epoch 2/20` and nothing says why."""
    return [f"stopped: trainer.max_steps={max_steps} reached"] if 0 <= max_steps <= step else []


def metrics_line(prefix: str, metrics: Mapping[str, Any]) -> str:
    return prefix + "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))


def quiet_lightning() -> None:
    """Silence Lightning's warnings that do not apply to how lightfit runs it."""
    import warnings

    # We log metrics once per epoch, so Lightning's hint about log_every_n_steps does not apply.
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # The CSV logger writes into the run directory, which Hydra has already created.
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # Resuming into the same run directory finds its checkpoints there, as it should.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # Metrics are summed across ranks by StageMetrics.compute() before they are logged.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    # Lightning 2.6 on torch >= 2.10 (upstream deprecation, harmless).
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
