"""One line per epoch, as Keras `fit()` prints it; shared by all loops."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("lightfit")

COLUMNS = ("train/loss", "train/acc", "val/loss", "val/acc")


def _label(key: str) -> str:
    stage, name = key.split("/", 1)
    return name if stage == "train" else f"{stage}_{name}"  # Keras names: loss, acc, val_loss


def epoch_line(epoch: int, max_epochs: int, metrics: Mapping[str, Any], seconds: float) -> str:
    """`epoch 3/20  loss 0.2010  acc 0.9412  val_loss 0.1633  val_acc 0.9538  0.4s`"""
    parts = [f"epoch {epoch}/{max_epochs}"]
    parts += [f"{_label(k)} {float(metrics[k]):.4f}" for k in COLUMNS if k in metrics]
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


def metrics_line(prefix: str, metrics: Mapping[str, Any]) -> str:
    return prefix + "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))


class EpochLine(Callback):
    """Prints `epoch_line` at the end of each training epoch (rank 0 only)."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            seconds = time.perf_counter() - self.start
            log.info(
                epoch_line(trainer.current_epoch + 1, trainer.max_epochs, trainer.callback_metrics, seconds)
            )
