"""Layers that carry a data set's statistics inside the network, as buffers.

`Standardize` scales raw features with the training split's mean and std; `TargetScale`
turns a regression network's standardised outputs back into the units of y. Both are
saved in every checkpoint, so a checkpoint alone turns raw inputs into raw predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """(x - mean) / std with per-feature statistics fixed at build time (buffers, not weights)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())  # clone: the buffer must not alias data stats
        self.register_buffer("std", std.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class TargetScale(nn.Module):
    """Standardised outputs -> the units of y: z * std + mean (regression only).

    The last layer of a regression network. The loss is taken on standardised values
    (`standardize`), so that the optimizer sees targets of unit scale whatever the units of
    y; everything else (metrics, predictions) sees raw units. `squeeze`: y is (N,), so the
    network's (N, 1) becomes (N,) (an (N, 1) output against (N,) targets would broadcast to
    N x N in a loss).
    """

    def __init__(self, mean: Tensor, std: Tensor, persistent: bool = True) -> None:
        super().__init__()
        # clone: the buffers must not alias the data's statistics
        self.register_buffer("mean", mean.clone(), persistent=persistent)
        self.register_buffer("std", std.clone(), persistent=persistent)

    @classmethod
    def placeholder(cls, target_shape: Sequence[int]) -> TargetScale:
        """Zeros and ones of the right shape, for a checkpoint's buffers to be loaded into."""
        return cls(torch.zeros(tuple(target_shape)), torch.ones(tuple(target_shape)))

    def forward(self, z: Tensor) -> Tensor:
        if self.mean.ndim == 0:
            z = z.squeeze(-1)  # (N, 1) -> (N,)
        return z * self.std + self.mean

    def standardize(self, y: Tensor) -> Tensor:
        return (y - self.mean) / self.std


def target_scale(net: nn.Module) -> TargetScale | None:
    """The network's TargetScale layer (a regression network built here), else None."""
    last = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
    return last if isinstance(last, TargetScale) else None
