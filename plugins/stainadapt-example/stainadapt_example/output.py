"""Output-space domain discriminator, in the style of AdaptSegNet (Tsai et al., CVPR 2018).

Instead of G's hidden feature maps it looks at G's predicted probability map and tells
source from target: segmentations of the target stain that "look wrong" (ragged, speckled,
implausible shapes) are what it learns to spot, and what G learns to stop producing.
It is cheap (a few strided convolutions on one channel) and complements the feature-level
discriminators: ``--disc mirrored --disc output``.
"""

from __future__ import annotations

import torch
from torch import nn

from stainadapt.discriminators.base import Discriminator


class OutputDiscriminator(Discriminator):
    """Fully convolutional classifier on ``(B, 1, H, W)`` probabilities -> ``(B,)`` logits."""

    kind = "domain"
    consumes = ("mask",)

    def __init__(self, width: int = 32, depth: int = 4, weight: float = 0.01) -> None:
        super().__init__("output", {"width": width, "depth": depth, "weight": weight})
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.weights = {"output": float(weight)}
        layers: list[nn.Module] = []
        channels = 1
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.body(inputs["mask"])
        return {"output": self.head(x.mean(dim=(2, 3))).squeeze(1)}


def create_output(
    features: dict[str, tuple[int, int]], width: int = 32, depth: int = 4, weight: float = 0.01
) -> OutputDiscriminator:
    """Factory registered as ``output``; ``features`` (G's feature table) is not needed here."""
    del features
    return OutputDiscriminator(width=width, depth=depth, weight=weight)
