"""``mirrored``: the paper's De + Dd pair, which read all maps of one side, uncropped.

De mirrors the encoder: ``f0`` enters a ResNet-like stream of residual blocks; each
stride-2 block halves the stream's resolution, and where the stream reaches the size of
the next encoder map (f1, f2, f3, f4) that map is concatenated onto it. Dd does the same
for the decoder, starting from ``f9`` and taking ``f8, f7, f6, f5`` in as it goes down.
No map is cropped or resized. ``side=encoder`` (UDA-e) or ``side=decoder`` (UDA-d)
keeps one of the two.

Stream widths grow with the stride (``8 * stride`` clamped to 16..256), so every level
costs about the same and the pair stays a few percent of G's FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import InputError, PluginError
from .base import Discriminator, LogitHead, ResidualBlock, check_weight, conv_block, width_at

__all__ = ["MirrorStream", "MirroredDiscriminator", "create_mirrored"]

ENCODER = ("f0", "f1", "f2", "f3", "f4")
DECODER = ("f9", "f8", "f7", "f6", "f5")
SIDES = ("both", "encoder", "decoder")


class MirrorStream(nn.Module):
    """One mirrored discriminator over maps given fine to coarse as (channels, stride)."""

    def __init__(self, levels: list[tuple[int, int]]) -> None:
        super().__init__()
        strides = [s for _, s in levels]
        if strides != sorted(strides) or len(set(strides)) != len(strides):
            raise PluginError(f"mirrored: maps must be given at increasing strides, got {strides}")
        first_c, stride = levels[0]
        self.stem = conv_block(first_c, width_at(stride))
        channels = width_at(stride)
        self.stages = nn.ModuleList()
        for c_in, s_next in levels[1:]:
            steps = int(round(math.log2(s_next / stride)))
            blocks = []
            for _ in range(steps):
                stride *= 2
                blocks.append(ResidualBlock(channels, width_at(stride), stride=2))
                channels = width_at(stride)
            self.stages.append(nn.Sequential(*blocks))
            channels += c_in  # the encoder/decoder map joins the stream here
        self.out = ResidualBlock(channels, width_at(stride * 2), stride=1)
        self.head = LogitHead(width_at(stride * 2))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = self.stem(maps[0])
        for stage, joining in zip(self.stages, maps[1:], strict=True):
            x = stage(x)
            if x.shape[-2:] != joining.shape[-2:]:
                raise InputError(
                    f"mirrored: stream size {tuple(x.shape[-2:])} does not match a map of "
                    f"size {tuple(joining.shape[-2:])}; input sides must be multiples of 32"
                )
            x = torch.cat([x, joining], dim=1)
        return self.head(self.out(x))


class MirroredDiscriminator(Discriminator):
    def __init__(
        self,
        features: Mapping[str, tuple[int, int]],
        side: str,
        weight_encoder: float,
        weight_decoder: float,
    ) -> None:
        super().__init__(
            "mirrored",
            {"side": side, "weight_encoder": weight_encoder, "weight_decoder": weight_decoder},
        )
        self.side = side
        self.streams = nn.ModuleDict()
        consumes: list[str] = []
        if side in ("both", "encoder"):
            self.streams["encoder"] = MirrorStream([features[n] for n in ENCODER])
            self.weights["encoder"] = weight_encoder
            consumes += ENCODER
        if side in ("both", "decoder"):
            self.streams["decoder"] = MirrorStream([features[n] for n in DECODER])
            self.weights["decoder"] = weight_decoder
            consumes += DECODER
        self.consumes = tuple(consumes)
        self._names = {"encoder": ENCODER, "decoder": DECODER}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._inputs(inputs)
        return {
            head: stream([inputs[n] for n in self._names[head]])
            for head, stream in self.streams.items()
        }


def create_mirrored(
    features: Mapping[str, tuple[int, int]],
    *,
    side: str = "both",
    weight_encoder: float = 0.01,
    weight_decoder: float = 0.05,
) -> MirroredDiscriminator:
    """De + Dd (UDA-ed); ``side=encoder`` gives UDA-e, ``side=decoder`` UDA-d."""
    if side not in SIDES:
        raise PluginError(
            f"discriminator 'mirrored': side must be one of {', '.join(SIDES)}, got {side!r}"
        )
    missing = [n for n in ENCODER + DECODER if n not in features]
    if missing:
        raise PluginError(f"discriminator 'mirrored' needs maps {', '.join(missing)} of G")
    return MirroredDiscriminator(
        features,
        side,
        check_weight("weight_encoder", weight_encoder),
        check_weight("weight_decoder", weight_decoder),
    )
