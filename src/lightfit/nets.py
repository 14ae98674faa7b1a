"""Networks: plain `nn.Module`s that know nothing about Lightning, Hydra or the loops.

Every network takes the shape of one input sample and the number of outputs (classes for
classification, targets for regression), so the same config works on any dataset.
`build_network` puts a `Standardize` layer in front, holding the training split's feature
statistics as buffers, and for regression a `TargetScale` layer behind, holding the
targets' statistics: the network learns standardised targets and answers in the units of
y. Both are saved in every checkpoint, so a checkpoint alone turns raw inputs into
predictions in raw units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightfit.errors import LightfitError


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


def _check_widths(name: str, widths: Sequence[int]) -> None:
    if any(int(w) < 1 for w in widths):
        raise LightfitError(f"model.{name}={list(widths)}: every width must be a positive integer")


def _check_dropout(dropout: float) -> None:
    if not 0 <= dropout < 1:
        raise LightfitError(f"model.dropout={dropout} must be in [0, 1)")


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU-Dropout blocks of widths `hidden`, then a Linear output layer."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.1,
    ) -> None:
        _check_widths("hidden", hidden)
        _check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)


class CNN(nn.Module):
    """Conv-ReLU-MaxPool blocks of `channels`, global average pooling, then an MLP head.

    Takes images as (N, H, W) (one channel) or (N, C, H, W).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (16, 32),
        hidden: Sequence[int] = (),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise LightfitError(
                f"model=cnn needs image-shaped samples (H, W) or (C, H, W); got samples of shape "
                f"{tuple(input_shape)} (use model=mlp for flat feature vectors)"
            )
        _check_widths("channels", channels)
        self.add_channel = len(input_shape) == 2
        blocks: list[nn.Module] = []
        in_channels = 1 if self.add_channel else input_shape[0]
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = MLP((in_channels,), num_outputs, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        return self.head(self.features(x))


def build_network(
    make_net: Callable[..., nn.Module],
    input_shape: Sequence[int],
    num_outputs: int,
    mean: Tensor | None = None,
    std: Tensor | None = None,
    targets: TargetScale | None = None,
) -> nn.Sequential:
    """Standardize + the network (+ `targets`, for regression).

    Without statistics the Standardize layer is the identity (0 and 1).
    """
    shape = tuple(input_shape)
    mean = torch.zeros(shape) if mean is None else mean
    std = torch.ones(shape) if std is None else std
    layers = [Standardize(mean, std), make_net(input_shape=shape, num_outputs=num_outputs)]
    return nn.Sequential(*layers, *([targets] if targets is not None else []))


def target_scale(net: nn.Module) -> TargetScale | None:
    """The network's TargetScale layer (a regression network built here), else None."""
    last = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
    return last if isinstance(last, TargetScale) else None
