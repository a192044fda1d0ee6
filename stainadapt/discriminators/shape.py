"""``shape``: the shape discriminator, a timm ResNet-18 on one-channel masks.

It tells ground-truth masks (label 1) from G's predicted probabilities (label 0), so G
learns to produce plausible glomerulus shapes. As in the paper it is a plain ResNet-18,
with its BatchNorm: feed real and predicted masks in one mixed batch (or keep it in
eval mode) so batch statistics do not reveal which is which.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch

from ..models.backbones import load_local_weights
from .base import Discriminator, check_weight

__all__ = ["ShapeDiscriminator", "create_shape"]


class ShapeDiscriminator(Discriminator):
    kind = "shape"
    consumes = ("mask",)

    def __init__(self, weight: float, pretrained: str | None = None) -> None:
        super().__init__("shape", {"weight": weight, "pretrained": pretrained})
        self.weights = {"shape": weight}
        self.net = timm.create_model("resnet18", in_chans=1, num_classes=1, pretrained=False)
        if pretrained:
            load_local_weights(self.net, pretrained, in_chans=1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        (mask,) = self._inputs(inputs)
        return {"shape": self.net(mask).squeeze(1)}


def create_shape(
    features: Mapping[str, tuple[int, int]] | None = None,
    *,
    weight: float = 0.1,
    pretrained: str | None = None,
) -> ShapeDiscriminator:
    """Shape discriminator on mask probabilities ``(B, 1, H, W)``; ``features`` is unused."""
    return ShapeDiscriminator(check_weight("weight", weight), pretrained)
