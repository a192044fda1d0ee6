"""``check_discriminator``: the contract every discriminator plugin must meet.

Third-party authors run it on their own plugin::

    from stainadapt.testing import check_discriminator
    check_discriminator("my_disc:depth=3")          # a registered plugin, by spec
    check_discriminator(create_my_disc)             # or the factory itself

Inputs are random tensors shaped from a feature table (G's, for ``backbone``, unless
``features`` is given), batch 2, at ``image_size``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..registry import create

__all__ = ["check_discriminator", "make_inputs"]

_tables: dict[str, dict[str, tuple[int, int]]] = {}


def _feature_table(backbone: str) -> dict[str, tuple[int, int]]:
    if backbone not in _tables:
        from ..models.unet import SegmentationNet

        _tables[backbone] = dict(SegmentationNet(backbone).feature_table)
    return _tables[backbone]


def make_inputs(
    features: Mapping[str, tuple[int, int]],
    image_size: int = 64,
    batch: int = 2,
    device: torch.device | str = "cpu",
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random maps ``(B, C, S/stride, S/stride)`` for every feature, and a ``mask``."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, (channels, stride) in features.items():
        side = image_size // stride
        out[name] = torch.randn(batch, channels, side, side, generator=gen)
    out["mask"] = torch.rand(batch, 1, image_size, image_size, generator=gen)
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in out.items()}


def check_discriminator(
    spec_or_factory: str | Callable[..., Any],
    features: Mapping[str, tuple[int, int]] | None = None,
    backbone: str = "resnet18",
    image_size: int = 64,
    device: torch.device | str | None = None,
) -> Any:
    """Create a discriminator and check the contract; returns the module.

    Checks: ``kind``, ``consumes`` and ``weights`` are well formed; ``forward`` returns
    one finite ``(B,)`` logit per head named in ``weights``; gradients reach every
    consumed input (so G is trained through it); the spec round-trips (recreating from
    ``.spec`` gives the same heads, inputs and parameter shapes); ``.to(device)`` works;
    a ``state_dict`` loaded into a fresh instance gives identical outputs.
    """
    table = dict(features) if features is not None else _feature_table(backbone)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"

    def build() -> Any:
        if isinstance(spec_or_factory, str):
            return create("discriminators", spec_or_factory, table)
        return spec_or_factory(table)

    disc = build()
    label = spec_or_factory if isinstance(spec_or_factory, str) else repr(spec_or_factory)
    assert isinstance(disc, torch.nn.Module), f"{label}: not an nn.Module"
    assert disc.kind in ("domain", "shape"), f"{label}: kind {disc.kind!r}"
    consumes = tuple(disc.consumes)
    assert consumes, f"{label}: consumes nothing"
    # a domain discriminator may read features or the prediction (output space, AdaptSegNet)
    allowed = ("mask",) if disc.kind == "shape" else (*table, "mask")
    assert set(consumes) <= set(allowed), f"{label}: consumes {consumes}, allowed {allowed}"
    assert disc.weights and all(
        isinstance(k, str) and math.isfinite(v) and v >= 0 for k, v in disc.weights.items()
    ), f"{label}: weights {disc.weights}"

    # Forward, shapes, finiteness, gradients to the inputs.
    inputs = make_inputs(table, image_size, requires_grad=True)
    out = disc(inputs)
    assert set(out) == set(disc.weights), f"{label}: heads {set(out)} != {set(disc.weights)}"
    for head, logits in out.items():
        assert tuple(logits.shape) == (2,), f"{label}: head {head} shape {tuple(logits.shape)}"
        assert torch.isfinite(logits).all(), f"{label}: head {head} not finite"
    sum(v.sum() for v in out.values()).backward()
    for name in consumes:
        grad = inputs[name].grad
        assert grad is not None, f"{label}: no gradient reaches input {name}"
        assert torch.isfinite(grad).all(), f"{label}: non-finite gradient on {name}"
        assert grad.abs().sum() > 0, f"{label}: zero gradient on input {name}"
    assert all(p.grad is not None for p in disc.parameters() if p.requires_grad), (
        f"{label}: some parameters get no gradient"
    )

    # Options round trip.
    spec = getattr(disc, "spec", None)
    if isinstance(spec, str) and isinstance(spec_or_factory, str):
        again = create("discriminators", spec, table)
        assert again.weights == disc.weights, f"{label}: weights differ after {spec!r}"
        assert tuple(again.consumes) == consumes, f"{label}: consumes differ after {spec!r}"
        shapes = {k: v.shape for k, v in disc.state_dict().items()}
        assert {k: v.shape for k, v in again.state_dict().items()} == shapes, label

    # state_dict round trip: identical outputs in eval mode.
    disc.eval()
    fresh = build().eval()
    fresh.load_state_dict(copy.deepcopy(disc.state_dict()))
    plain = {k: v.detach() for k, v in inputs.items()}
    with torch.no_grad():
        a, b = disc(plain), fresh(plain)
    for head in a:
        assert torch.equal(a[head], b[head]), f"{label}: state_dict round trip changes {head}"

    # Device move.
    moved = fresh.to(device)
    on_device = make_inputs(table, image_size, device=device)
    with torch.no_grad():
        res = moved(on_device)
    for head, logits in res.items():
        assert logits.device.type == torch.device(device).type, f"{label}: {head} off device"
        assert tuple(logits.shape) == (2,)
    return disc
