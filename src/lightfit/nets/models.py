"""The networks: an MLP for feature vectors, a CNN for images, and `build_network`.

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
from lightfit.nets.layers import Standardize, TargetScale


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
