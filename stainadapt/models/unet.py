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

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, PluginError
from .batchnorm import start_statistics, statistics_kept_in

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
    """U-Net on an encoder; one logit channel at input resolution.

    Args:
        backbone: an encoder spec: a backbones plugin (``"resnet34"``), a timm name
            (``"convnext_tiny"``, ``"resnet34.a1_in1k"``) or a hub model
            (``"timm:hf_hub=org/name"``); see :mod:`stainadapt.models.encoders`.
        pretrained: ``None`` (random init), a local weights file for the encoder, or
            ``"imagenet"``/``"default"`` (the model's published weights, via timm).
        decoder_channels: output channels of the five decoder blocks (f5..f9).
        in_chans: input channels (3 for RGB).
        norm: ``"batch"`` (BatchNorm, as the backbone comes), ``"group"`` or ``"instance"``
            (every BatchNorm of encoder and decoder replaced by per-sample normalisation,
            :func:`~stainadapt.models.batchnorm.replace_batchnorm`).
        encoder_record: rebuild the encoder from a model.json ``encoder`` record instead
            of resolving ``backbone`` (offline; random weights until loaded).
        input_norm: ``{"mean": [...], "std": [...]}`` applied to the input (0..1) before
            the encoder; by default the statistics the pretrained weights expect, and
            none for random init (the input then goes in as it comes).
        load_weights: False builds G as ``pretrained`` says (input normalisation,
            record) but leaves the encoder's weights random, for a caller that loads its
            own (a resumed run); nothing is read or downloaded.

    ``forward(x)`` takes ``(B, in_chans, H, W)`` with H, W multiples of 32 and returns
    logits ``(B, 1, H, W)``; with ``return_features=True`` it returns
    ``(logits, {"f0": ..., "f9": ...})``, the very tensors of the forward pass (no copies).
    An encoder whose pyramid starts at stride 4 (ConvNeXt, ...) gets ``stem``: two
    conv-BN-ReLU from the input, the first at stride 2, which make f0 (learned, and not
    part of the encoder: it trains at the full learning rate and is never frozen).
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        pretrained: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        in_chans: int = 3,
        norm: str = "batch",
        encoder_record: dict | None = None,
        input_norm: dict | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        from .encoders import (
            InputNormalization,
            build_encoder,
            encoder_from_record,
            input_stats,
        )
        from .encoders import encoder_record as make_record

        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5:
            raise InputError(
                f"decoder_channels must have 5 entries (one per decoder block), "
                f"got {decoder_channels}"
            )
        if encoder_record is not None:
            self.encoder = encoder_from_record(encoder_record, in_chans)
            self.encoder_record: dict | None = dict(encoder_record)
        else:
            self.encoder = build_encoder(backbone, pretrained if load_weights else None,
                                         in_chans)
            self.encoder_record = make_record(self.encoder, pretrained)
        self.backbone_name = backbone
        self.decoder_channels = decoder_channels
        self.in_chans = in_chans
        self.encoder_frozen = False
        # Target-domain BatchNorm statistics (``train --target-statistics``): while set, the
        # second part of a ``split`` batch updates these instead of the running statistics
        # (models/batchnorm.py, statistics_kept_in). Not in the state dict: the run folder
        # keeps them as target-stats.safetensors.
        self.target_statistics: dict[str, torch.Tensor] | None = None
        if input_norm is None and encoder_record is None:
            input_norm = input_stats(self.encoder, pretrained)
        self.input_norm = (InputNormalization(input_norm["mean"], input_norm["std"])
                           if input_norm else None)
        info = self.encoder.feature_info
        enc_channels = list(info.channels())
        strides = list(info.reduction())
        self.stem: nn.Module | None = None
        if strides == [4, 8, 16, 32]:  # the pyramid starts at stride 4: f0 from a stem
            width = 32
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                *_conv_bn_relu(width, width),
            )
            enc_channels, strides = [width, *enc_channels], [2, *strides]
        if strides != [2, 4, 8, 16, 32]:
            raise PluginError(
                f"backbone {backbone!r} gives levels at strides {strides}; "
                "a backbone must give 5 levels at strides 2, 4, 8, 16, 32 "
                "(or 4 at strides 4..32, and G adds the stride-2 level)"
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

    @property
    def input_stats(self) -> dict[str, list[float]] | None:
        """The input normalisation's mean and std (None: the input goes in as it is)."""
        return None if self.input_norm is None else self.input_norm.stats()

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze (or release) the encoder: no gradients, and its normalisation layers in
        eval mode whatever ``train()`` says, so BatchNorm statistics do not move."""
        self.encoder_frozen = bool(frozen)
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationNet:
        """``nn.Module.train``, keeping a frozen encoder in eval mode."""
        super().train(mode)
        if mode and self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(
        self, x: torch.Tensor, return_features: bool = False, split: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (and the feature maps); see the class docstring.

        ``split=k`` runs the first ``k`` samples and the rest as two separate passes and
        concatenates the results, so that in training mode BatchNorm normalises each
        part with its own batch statistics. The trainer passes the source batch size:
        a batch that mixes two stains would otherwise be normalised with statistics
        that fit neither (see :mod:`stainadapt.engine.steps`). It is one call, so a
        DistributedDataParallel wrapper sees one forward per backward. With
        :attr:`target_statistics` set, the second part keeps running statistics of its own
        in training mode, and is normalised with them in eval mode.
        """
        if x.ndim != 4:
            raise InputError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if split is not None and 0 < split < x.shape[0]:
            kept = self.target_statistics
            if kept is not None and self.training:
                # a new layer's target statistics start from G's, before this batch
                start_statistics(self, kept)
            first = self.forward(x[:split], return_features=True)
            target = (statistics_kept_in(self, kept, every_layer=not self.training)
                      if kept is not None else contextlib.nullcontext())
            with target:
                second = self.forward(x[split:], return_features=True)
            logits = torch.cat([first[0], second[0]])
            if not return_features:
                return logits
            feats = {k: torch.cat([v, second[1][k]]) for k, v in first[1].items()}
            return logits, feats
        check_input_size(x.shape[-2], x.shape[-1], self.max_stride)
        if self.input_norm is not None:  # pretrained weights: their mean/std
            x = self.input_norm(x)
        enc = list(self.encoder(x))
        if self.stem is not None:
            enc.insert(0, self.stem(x))
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
