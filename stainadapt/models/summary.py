"""Sizes and costs of G and of discriminators: what ``stainadapt info`` reports.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of one
image (so a multiply-add counts 2); parameters are counted on the modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..registry import create
from .unet import SegmentationNet, check_input_size

__all__ = ["count_params", "forward_flops", "encoder_summary", "model_summary"]


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def forward_flops(fn: Any, *args: Any) -> tuple[int, Any]:
    """FLOPs of ``fn(*args)`` (no gradients) and its result."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        result = fn(*args)
    return counter.get_total_flops(), result


def encoder_summary(net: SegmentationNet, backbone: str) -> dict[str, Any]:
    """The encoder's resolved levels and the weights it would start from.

    ``{"timm_name", "levels": [timm level indices], "strides": [f0..f4 strides],
    "stem": bool, "weights": {"tag", "hf_hub_id", "cached", "file", "mean", "std"}}``;
    ``cached`` says whether ``--pretrained imagenet`` finds the weights in the local
    cache (checked without network); mean/std are the input normalisation G applies
    with them (random init: none).
    """
    from .encoders import weights_status

    record = net.encoder_record or {}
    return {
        "timm_name": record.get("timm_name"),
        "levels": record.get("out_indices"),
        "strides": [net.feature_table[f"f{i}"][1] for i in range(5)],
        "stem": net.stem is not None,
        "weights": weights_status(backbone),
    }


def model_summary(
    backbone: str = "resnet34",
    discs: Sequence[str] = (),
    image_size: int = 256,
) -> dict[str, Any]:
    """Parameters and forward GFLOPs per image of G and of each discriminator spec.

    Returns ``{"generator": {"params", "gflops", "backbone"}, "discriminators":
    {spec: {"params", "gflops", "kind", "consumes", "weights"}}, "features":
    {"f0": [C, H, W], ...}, "image_size": N, "encoder": encoder_summary(...)}``. Runs
    on the CPU, one image, random weights (nothing is read or downloaded).
    """
    check_input_size(image_size, image_size)
    net = SegmentationNet(backbone).eval()
    x = torch.zeros(1, net.in_chans, image_size, image_size)
    flops, (logits, feats) = forward_flops(lambda t: net(t, return_features=True), x)
    out: dict[str, Any] = {
        "generator": {"backbone": backbone, "params": count_params(net), "gflops": flops / 1e9},
        "discriminators": {},
        "features": {k: list(v.shape[1:]) for k, v in feats.items()},
        "image_size": image_size,
        "encoder": encoder_summary(net, backbone),
    }
    inputs = dict(feats, mask=torch.sigmoid(logits))
    for spec in discs:
        disc = create("discriminators", spec, net.feature_table).eval()
        d_flops, _ = forward_flops(disc, inputs)
        out["discriminators"][spec] = {
            "params": count_params(disc),
            "gflops": d_flops / 1e9,
            "kind": disc.kind,
            "consumes": list(disc.consumes),
            "weights": dict(disc.weights),
        }
    return out
