"""Which epoch's weights are the best: the monitored metric, and what breaks a tie.

A saturated metric ties: on a small validation split, val/acc can reach 1.0 in the first
epoch and stay there while the model keeps improving. Lightning's ModelCheckpoint keeps
the first of equal scores, so `best.ckpt` froze at epoch 1 (test accuracy 0.61, where the
last epoch's weights did far better). Here a tie goes to the lower val/loss, and if that
ties too, to the later epoch. Both the Lightning loops (callbacks.RunCheckpoints) and the
explicit loop decide with this class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

TIE_BREAK = "val/loss"
BEST_KEY = "best"  # where the explicit loop's checkpoints keep the best score


@dataclass
class BestScore:
    monitor: str
    mode: str  # "min" or "max"
    score: float | None = None
    tie_break: float | None = None  # val/loss of the best epoch
    epoch: int | None = None

    def improves(self, metrics: Mapping[str, Any]) -> bool:
        """Whether an epoch with these metrics is at least as good as the best so far."""
        score = float(metrics[self.monitor])
        if math.isnan(score):
            return False
        if self.score is None:
            return True
        if score != self.score:
            return score < self.score if self.mode == "min" else score > self.score
        loss = float(metrics.get(TIE_BREAK, math.nan))
        if self.tie_break is None or math.isnan(loss) or math.isnan(self.tie_break):
            return True  # nothing to break the tie with: the later epoch
        return loss <= self.tie_break

    def update(self, metrics: Mapping[str, Any], epoch: int) -> bool:
        """Record the epoch if it `improves`; returns whether it did."""
        if not self.improves(metrics):
            return False
        self.score = float(metrics[self.monitor])
        self.tie_break = float(metrics[TIE_BREAK]) if TIE_BREAK in metrics else None
        self.epoch = epoch
        return True

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("score", "tie_break", "epoch"):
            setattr(self, key, state.get(key))
