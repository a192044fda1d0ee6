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

__all__ = ["ShapeDiscriminator", "create_shape", "straight_through_binarize"]


class ShapeDiscriminator(Discriminator):
    kind = "shape"
    consumes = ("mask",)

    def __init__(self, weight: float, pretrained: str | None = None, hard: bool = True) -> None:
        super().__init__("shape", {"weight": weight, "pretrained": pretrained, "hard": hard})
        self.weights = {"shape": weight}
        self.hard = hard
        self.net = timm.create_model("resnet18", in_chans=1, num_classes=1, pretrained=False)
        if pretrained:
            load_local_weights(self.net, pretrained, in_chans=1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        (mask,) = self._inputs(inputs)
        if self.hard:
            mask = straight_through_binarize(mask)
        return {"shape": self.net(mask).squeeze(1)}


def straight_through_binarize(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``probs > threshold`` in the forward pass, the identity's gradient in the backward.

    Ground-truth masks are exactly 0 or 1 while G's probabilities are soft, so a shape
    discriminator fed raw probabilities wins on that cue alone (accuracy ~1.0 within an
    epoch) and G's shape term only sharpens edges. Binarising both removes the cue and
    leaves the shape; the straight-through estimator still passes G a gradient.
    """
    hard = (probs > threshold).to(probs.dtype)
    return hard + probs - probs.detach()


def create_shape(
    features: Mapping[str, tuple[int, int]] | None = None,
    *,
    weight: float = 0.1,
    pretrained: str | None = None,
    hard: bool = True,
) -> ShapeDiscriminator:
    """Shape discriminator on mask probabilities ``(B, 1, H, W)``; ``features`` is unused.

    ``hard`` (default on) binarises its input with a straight-through estimator, so that
    the discriminator judges shapes, not the softness of G's probabilities; ``hard=false``
    gives the paper's literal version (raw probabilities).
    """
    return ShapeDiscriminator(check_weight("weight", weight), pretrained, bool(hard))
