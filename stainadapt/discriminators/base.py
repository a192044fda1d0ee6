"""The discriminator interface and the small building blocks the built-ins share.

A discriminator is an ``nn.Module`` that declares what it reads and how its loss is
weighted:

* ``kind``: ``"domain"`` (source=1 vs target=0 on G's feature maps) or ``"shape"``
  (ground-truth mask=1 vs predicted probabilities=0);
* ``consumes``: the feature names it reads (``"f0"``..``"f9"``) or ``("mask",)``;
* ``weights``: head name -> alpha of that head's adversarial term in G's loss;
* ``forward(inputs)``: ``{name: Tensor}`` -> ``{head: logits (B,)}``.

The building blocks use no BatchNorm: a discriminator batch mixes the two domains, and
batch statistics would let it (and G) read the domain from the batch composition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputError, PluginError

__all__ = [
    "Discriminator",
    "conv_block",
    "ResidualBlock",
    "LogitHead",
    "check_layer",
    "check_weight",
    "width_at",
]

NEG_SLOPE = 0.2


class Discriminator(nn.Module):
    """Base class of every discriminator plugin (see the module docstring)."""

    kind: str = "domain"
    consumes: tuple[str, ...] = ()
    weights: dict[str, float]

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.name = name
        self.options: dict[str, Any] = dict(options or {})
        self.weights = {}

    @property
    def spec(self) -> str:
        """A spec string that recreates this discriminator (``"single:layer=f9,..."``)."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())

    def _inputs(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [k for k in self.consumes if k not in inputs]
        if missing:
            raise InputError(
                f"discriminator {self.name!r} needs inputs {', '.join(self.consumes)}; "
                f"missing {', '.join(missing)}"
            )
        return [inputs[k] for k in self.consumes]

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, consumes={self.consumes}, weights={self.weights}"


def check_weight(name: str, value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise PluginError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise PluginError(f"{name} must be a finite number >= 0, got {value!r}")
    return weight


def check_layer(plugin: str, layer: Any, features: Mapping[str, tuple[int, int]]) -> str:
    """The layer name if G has it, else a :class:`PluginError` listing the valid ones."""
    if not isinstance(layer, str) or layer not in features:
        valid = ", ".join(features)
        raise PluginError(
            f"discriminator {plugin!r}: unknown layer {layer!r}; choose one of {valid} "
            "(f0-f4 encoder at strides 2-32, f5-f9 decoder at strides 16-1)"
        )
    return layer


def width_at(stride: int, base: int = 8, low: int = 16, high: int = 256) -> int:
    """Stream width at a stride: ``base * stride`` clamped; keeps every level's cost equal."""
    return int(min(high, max(low, base * stride)))


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + LeakyReLU(0.2), no normalisation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.LeakyReLU(NEG_SLOPE, inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a (1x1 when needed) shortcut, as in a ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = nn.LeakyReLU(NEG_SLOPE)
        self.shortcut: nn.Module = (
            nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(y + self.shortcut(x))


class LogitHead(nn.Module):
    """Global average pooling and a linear layer: ``(B, C, H, W) -> (B,)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3))).squeeze(1)
