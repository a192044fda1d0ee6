"""``check_backbone``: the contract every backbone plugin must meet."""

from __future__ import annotations

from typing import Any

import torch

from ..registry import create

__all__ = ["check_backbone", "STRIDES"]

STRIDES = [2, 4, 8, 16, 32]


def check_backbone(name: str, image_size: int = 64, in_chans: int = 3) -> Any:
    """Create backbone ``name`` (a spec) and check it; returns the module.

    Checks: ``feature_info`` lists 5 levels at strides 2, 4, 8, 16, 32; one tiny forward
    ``(1, in_chans, S, S)`` returns 5 maps whose channels match ``feature_info`` and
    whose sides are ``S / stride``.
    """
    options = {"in_chans": in_chans} if in_chans != 3 else {}
    model = create("backbones", name, **options)
    info = getattr(model, "feature_info", None)
    assert info is not None, f"backbone {name!r} has no feature_info"
    channels, strides = list(info.channels()), list(info.reduction())
    assert strides == STRIDES, f"backbone {name!r}: strides {strides}, expected {STRIDES}"
    assert len(channels) == 5 and all(c > 0 for c in channels), channels
    model.eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, in_chans, image_size, image_size))
    assert len(maps) == 5, f"backbone {name!r} returned {len(maps)} maps, expected 5"
    for i, (m, c, s) in enumerate(zip(maps, channels, strides, strict=True)):
        expected = (1, c, image_size // s, image_size // s)
        assert tuple(m.shape) == expected, (
            f"backbone {name!r} level {i}: shape {tuple(m.shape)}, expected {expected}"
        )
    return model
