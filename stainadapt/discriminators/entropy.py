"""``entropy``: a domain discriminator on G's per-pixel entropy (ADVENT, Vu et al., 2019).

A model trained on one stain is sure of itself there and unsure on another: its target
predictions are full of pixels near p = 0.5. This discriminator reads the weighted
self-information map of G's probabilities, ``-p log2 p`` and ``-(1-p) log2 (1-p)`` (two
channels in [0, 0.53]), and tells source (1) from target (0); G's adversarial term then
pushes the target's uncertainty maps to look like the source's -- confident, with
uncertainty only along glomerulus borders -- rather than only lowering entropy pixel by
pixel. It reads no feature map, so it works with any backbone:
``--disc entropy`` or ``--disc mirrored --disc shape --disc entropy:weight=0.02``.

Strided 3x3 convolutions with LeakyReLU and no normalisation (a batch mixes the domains,
see ``base.py``), then global average pooling: one logit per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import PluginError
from .base import Discriminator, LogitHead, check_weight, conv_block

__all__ = ["EntropyDiscriminator", "create_entropy", "self_information"]

_EPS = 1e-6


def self_information(probs: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` probabilities -> ``(B, 2, H, W)``: ``-p log2 p``, ``-(1-p) log2 (1-p)``.

    Their sum is the binary entropy in bits (1 at p = 0.5, 0 at p = 0 or 1). Computed in
    float32 with p clamped away from 0 and 1, so the gradient stays finite everywhere.
    """
    p = probs.float().clamp(_EPS, 1 - _EPS)
    q = 1 - p
    return torch.cat([-p * torch.log(p), -q * torch.log(q)], dim=1) / math.log(2)


class EntropyDiscriminator(Discriminator):
    kind = "domain"
    consumes = ("mask",)

    def __init__(self, weight: float, width: int, depth: int) -> None:
        super().__init__("entropy", {"weight": weight, "width": width, "depth": depth})
        self.weights = {"entropy": weight}
        layers: list[nn.Module] = []
        channels = 2
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers.append(conv_block(channels, out, stride=2))
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = LogitHead(channels)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        (probs,) = self._inputs(inputs)
        info = self_information(probs).to(self.head.fc.weight.dtype)
        return {"entropy": self.head(self.body(info))}


def create_entropy(
    features: Mapping[str, tuple[int, int]] | None = None,
    *,
    weight: float = 0.01,
    width: int = 32,
    depth: int = 4,
) -> EntropyDiscriminator:
    """Entropy-map discriminator; ``features`` is unused (it reads G's probabilities).

    ``weight`` is its alpha in G's loss; ``width`` the channels of the first of ``depth``
    stride-2 convolutions (doubling up to 8x).
    """
    try:
        width, depth = int(width), int(depth)
    except (TypeError, ValueError):
        raise PluginError(f"entropy: width and depth must be integers, got {width!r}, "
                          f"{depth!r}") from None
    if width < 1 or not 1 <= depth <= 8:
        raise PluginError(f"entropy: width must be >= 1 and depth 1-8, got {width}, {depth}")
    return EntropyDiscriminator(check_weight("weight", weight), width, depth)
