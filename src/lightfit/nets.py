"""Networks: plain `nn.Module`s that know nothing about Lightning, Hydra or the loops.

Every network takes the shape of one input sample and the number of classes, so the
same config works on any dataset. `build_network` puts a `Standardize` layer in front,
holding the training split's feature statistics as buffers: they are saved in every
checkpoint, so a checkpoint alone turns raw inputs into predictions.
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


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU-Dropout blocks of widths `hidden`, then a Linear classifier."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN(nn.Module):
    """Conv-ReLU-MaxPool blocks of `channels`, global average pooling, a Linear classifier.

    Takes images as (N, H, W) (one channel) or (N, C, H, W).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
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
        self.head = MLP((in_channels,), num_classes, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        return self.head(self.features(x))


def build_network(
    make_net: Callable[..., nn.Module],
    input_shape: Sequence[int],
    num_classes: int,
    mean: Tensor | None = None,
    std: Tensor | None = None,
) -> nn.Sequential:
    """Standardize + the network. Without statistics the layer is the identity (0 and 1)."""
    shape = tuple(input_shape)
    mean = torch.zeros(shape) if mean is None else mean
    std = torch.ones(shape) if std is None else std
    return nn.Sequential(Standardize(mean, std), make_net(input_shape=shape, num_classes=num_classes))
