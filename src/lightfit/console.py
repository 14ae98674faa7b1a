"""One line per epoch, as Keras `fit()` prints it; shared by all loops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STAGES = ("train", "val")


def _label(key: str) -> str:
    stage, name = key.split("/", 1)
    return name if stage == "train" else f"{stage}_{name}"  # Keras names: loss, acc, val_loss


def epoch_line(epoch: int, max_epochs: int, metrics: Mapping[str, Any], seconds: float) -> str:
    """`epoch 3/20  loss 0.2010  acc 0.9412  val_loss 0.1633  val_acc 0.9538  0.4s`

    Every train/ and val/ metric, the loss first, the others in the order they were computed.
    """
    parts = [f"epoch {epoch}/{max_epochs}"]
    for stage in STAGES:
        keys = [k for k in metrics if k.startswith(f"{stage}/")]
        keys.sort(key=lambda k: not k.endswith("/loss"))  # stable: the loss, then the rest in order
        parts += [f"{_label(k)} {float(metrics[k]):.4f}" for k in keys]
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


def metrics_line(prefix: str, metrics: Mapping[str, Any]) -> str:
    return prefix + "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))
