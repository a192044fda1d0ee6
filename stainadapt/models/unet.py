"""G, the segmentation network: a timm encoder with a U-Net decoder (as in smp's Unet).

Feature maps are named as in the paper: encoder ``f0..f4`` (strides 2, 4, 8, 16, 32),
decoder ``f5..f9`` (strides 16, 8, 4, 2, 1). The discriminators read them by name.

Example::

    >>> net = SegmentationNet("resnet18")
    >>> logits, feats = net(torch.zeros(2, 3, 64, 64), return_features=True)
    >>> logits.shape, feats["f4"].shape, feats["f9"].shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 512, 2, 2]), torch.Size([2, 16, 64, 64]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, PluginError
from ..registry import create

__all__ = ["SegmentationNet", "DecoderBlock", "FEATURE_NAMES", "check_input_size"]

FEATURE_NAMES: tuple[str, ...] = tuple(f"f{i}" for i in range(10))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """2x nearest upsampling, concatenation of the skip map (if any), two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def check_input_size(height: int, width: int, multiple: int = 32) -> None:
    """Raise :class:`InputError` unless both sides are multiples of ``multiple``."""
    if height % multiple == 0 and width % multiple == 0 and height > 0 and width > 0:
        return

    def options(n: int) -> str:
        low, high = (n // multiple) * multiple, -(-n // multiple) * multiple
        return str(high) if low in (0, high) else f"{low} or {high}"

    raise InputError(
        f"input size {height}x{width}: both sides must be multiples of {multiple}; "
        f"pad (or crop) the image to a multiple of {multiple} "
        f"(height {options(height)}, width {options(width)})"
    )


class SegmentationNet(nn.Module):
    """U-Net on a registered backbone; one logit channel at input resolution.

    Args:
        backbone: a backbone plugin spec (``"resnet34"``, ``"efficientnet_b0"``, ...).
        pretrained: local weights file for the encoder, or ``None``.
        decoder_channels: output channels of the five decoder blocks (f5..f9).
        in_chans: input channels (3 for RGB).
        norm: ``"batch"`` (BatchNorm, as the backbone comes), ``"group"`` or ``"instance"``
            (every BatchNorm of encoder and decoder replaced by per-sample normalisation,
            :func:`~stainadapt.models.batchnorm.replace_batchnorm`).

    ``forward(x)`` takes ``(B, in_chans, H, W)`` with H, W multiples of 32 and returns
    logits ``(B, 1, H, W)``; with ``return_features=True`` it returns
    ``(logits, {"f0": ..., "f9": ...})``, the very tensors of the forward pass (no copies).
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        pretrained: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        in_chans: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5:
            raise InputError(
                f"decoder_channels must have 5 entries (one per decoder block), "
                f"got {decoder_channels}"
            )
        options = {"pretrained": pretrained}
        if in_chans != 3:
            options["in_chans"] = in_chans
        self.encoder = create("backbones", backbone, **options)
        self.backbone_name = backbone
        self.decoder_channels = decoder_channels
        self.in_chans = in_chans
        info = self.encoder.feature_info
        enc_channels = list(info.channels())
        strides = list(info.reduction())
        if strides != [2, 4, 8, 16, 32]:
            raise PluginError(
                f"backbone {backbone!r} gives levels at strides {strides}; "
                "a backbone must give 5 levels at strides 2, 4, 8, 16, 32"
            )
        self.max_stride = strides[-1]
        skips = enc_channels[-2::-1] + [0]  # f3, f2, f1, f0, then none
        ins = [enc_channels[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.head = nn.Conv2d(decoder_channels[-1], 1, 3, padding=1)
        self.norm = norm
        if norm != "batch":  # encoder and decoder alike (models/batchnorm.py)
            from .batchnorm import replace_batchnorm

            replace_batchnorm(self, norm)
        table: dict[str, tuple[int, int]] = {}
        for i, (c, s) in enumerate(zip(enc_channels, strides, strict=True)):
            table[f"f{i}"] = (c, s)
        stride = strides[-1]
        for i, c in enumerate(decoder_channels):
            stride //= 2
            table[f"f{5 + i}"] = (c, stride)
        self.feature_table: dict[str, tuple[int, int]] = table

    def forward(
        self, x: torch.Tensor, return_features: bool = False, split: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (and the feature maps); see the class docstring.

        ``split=k`` runs the first ``k`` samples and the rest as two separate passes and
        concatenates the results, so that in training mode BatchNorm normalises each
        part with its own batch statistics. The trainer passes the source batch size:
        a batch that mixes two stains would otherwise be normalised with statistics
        that fit neither (see :mod:`stainadapt.engine.steps`). It is one call, so a
        DistributedDataParallel wrapper sees one forward per backward.
        """
        if x.ndim != 4:
            raise InputError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if split is not None and 0 < split < x.shape[0]:
            first = self.forward(x[:split], return_features=True)
            second = self.forward(x[split:], return_features=True)
            logits = torch.cat([first[0], second[0]])
            if not return_features:
                return logits
            feats = {k: torch.cat([v, second[1][k]]) for k, v in first[1].items()}
            return logits, feats
        check_input_size(x.shape[-2], x.shape[-1], self.max_stride)
        enc = self.encoder(x)
        feats = {f"f{i}": f for i, f in enumerate(enc)}
        y = enc[-1]
        skips = [*enc[-2::-1], None]
        for i, (block, skip) in enumerate(zip(self.decoder, skips, strict=True)):
            y = block(y, skip)
            feats[f"f{5 + i}"] = y
        logits = self.head(y)
        if return_features:
            return logits, feats
        return logits
