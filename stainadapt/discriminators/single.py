"""``single``: a domain classifier on one feature map (SF-l in the paper: SF-4, SF-9)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .base import Discriminator, LogitHead, check_layer, check_weight, conv_block, width_at

__all__ = ["SingleDiscriminator", "create_single"]


class SingleDiscriminator(Discriminator):
    """Strided conv stack on one map, then global pooling and a logit.

    The number of stride-2 convolutions is ``max(2, log2(32 / stride))``, so a fine map
    (f9, stride 1) is reduced to stride 32 like the bottleneck, and a coarse one still
    gets two layers. After each convolution the width is ``base * stride`` (clamped to
    16..256), so every layer costs about the same and SF-9 stays cheap at full
    resolution.
    """

    def __init__(
        self, layer: str, channels: int, stride: int, weight: float, base: int = 8
    ) -> None:
        super().__init__("single", {"layer": layer, "weight": weight, "base": base})
        self.consumes = (layer,)
        self.weights = {"single": weight}
        n_down = max(2, int(round(math.log2(32 / stride))))
        layers: list[nn.Module] = []
        cin = channels
        for _ in range(n_down):
            stride *= 2
            cout = width_at(stride, base=base)
            layers.append(conv_block(cin, cout, stride=2))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = LogitHead(cin)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        (x,) = self._inputs(inputs)
        return {"single": self.head(self.body(x))}


def create_single(
    features: Mapping[str, tuple[int, int]],
    *,
    layer: str = "f4",
    weight: float = 0.01,
    base: int = 8,
) -> SingleDiscriminator:
    """SF-l: ``--disc single:layer=f9,weight=0.05``. ``features``: name -> (channels, stride)."""
    layer = check_layer("single", layer, features)
    channels, stride = features[layer]
    return SingleDiscriminator(layer, channels, stride, check_weight("weight", weight), int(base))
