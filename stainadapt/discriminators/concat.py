"""``concat``: AFC (Kamnitsas et al. 2017): all of f0..f9 at one size, one classifier.

Every map is brought to the spatial size of the smallest one (f4, stride 32) and the
maps are concatenated along channels. ``mode="crop"`` (default, as in the paper the
seed paper compares with) takes the central window of each larger map, so most of a
fine map is never seen; ``mode="pool"`` averages each map down with adaptive average
pooling instead, which keeps all the content at reduced resolution.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import PluginError
from .base import Discriminator, LogitHead, check_weight, conv_block

__all__ = ["ConcatDiscriminator", "create_concat", "center_crop"]

MODES = ("crop", "pool")


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of ``(B, C, H, W)`` (a view, no copy)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class ConcatDiscriminator(Discriminator):
    def __init__(
        self, names: tuple[str, ...], channels: int, mode: str, weight: float, width: int
    ) -> None:
        super().__init__("concat", {"mode": mode, "weight": weight, "width": width})
        self.consumes = names
        self.weights = {"concat": weight}
        self.mode = mode
        self.body = torch.nn.Sequential(
            conv_block(channels, width),
            conv_block(width, width, stride=2),
            conv_block(width, width),
        )
        self.head = LogitHead(width)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        maps = self._inputs(inputs)
        height = min(m.shape[-2] for m in maps)
        width = min(m.shape[-1] for m in maps)
        if self.mode == "crop":
            sized = [center_crop(m, height, width) for m in maps]
        else:
            sized = [F.adaptive_avg_pool2d(m, (height, width)) for m in maps]
        return {"concat": self.head(self.body(torch.cat(sized, dim=1)))}


def create_concat(
    features: Mapping[str, tuple[int, int]],
    *,
    mode: str = "crop",
    weight: float = 0.01,
    width: int = 256,
) -> ConcatDiscriminator:
    """AFC over every map of G: ``--disc concat:mode=pool``."""
    if mode not in MODES:
        raise PluginError(f"discriminator 'concat': mode must be one of {', '.join(MODES)}")
    names = tuple(features)
    channels = sum(c for c, _ in features.values())
    return ConcatDiscriminator(names, channels, mode, check_weight("weight", weight), int(width))
