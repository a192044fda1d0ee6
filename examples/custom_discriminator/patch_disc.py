"""A PatchGAN-style domain discriminator on one of G's feature maps, as a stainadapt plugin.

It scores every patch of the chosen map as source or target and averages the patch
logits, so the domain signal stays local (the built-in ``single`` pools globally).
This file is all a plugin is: a ``Discriminator`` subclass and a factory.
"""

from __future__ import annotations

import torch
from torch import nn

from stainadapt.discriminators.base import Discriminator


class PatchDiscriminator(Discriminator):
    kind = "domain"  # source (1) vs target (0); "shape" would compare masks instead

    def __init__(self, layer: str, channels: int, width: int, weight: float) -> None:
        super().__init__("patch", {"layer": layer, "width": width, "weight": weight})
        self.consumes = (layer,)  # which of G's maps (f0..f9, or "mask") it reads
        self.weights = {"patch": weight}  # head name -> alpha in L_seg - sum(alpha * L_D)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 1),  # one logit per patch
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.body(inputs[self.consumes[0]])
        return {"patch": logits.mean(dim=(1, 2, 3))}  # (B,): one logit per image


def create_patch(
    features: dict[str, tuple[int, int]], layer: str = "f4", width: int = 64,
    weight: float = 0.01,
) -> PatchDiscriminator:
    """Factory: ``--disc patch:layer=f9,width=32,weight=0.02``; ``features``: G's
    ``{name: (channels, stride)}``, passed by stainadapt."""
    if layer not in features:
        raise ValueError(f"layer {layer!r} is not one of {', '.join(features)}")
    return PatchDiscriminator(layer, features[layer][0], int(width), float(weight))
