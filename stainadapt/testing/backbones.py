"""``check_backbone``: the contract every backbone plugin must meet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import create

__all__ = ["check_backbone", "fill_hub_cache", "STRIDES"]

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


def fill_hub_cache(cache: Path | str, repo_id: str, tensors: dict[str, torch.Tensor],
                   config: dict[str, Any] | None = None, revision: str = "0" * 40) -> Path:
    """Lay out a Hugging Face cache entry for ``repo_id`` the way ``hf_hub_download``
    leaves it; returns the weights file.

    ``cache`` is an ``HF_HUB_CACHE`` folder; ``tensors`` go to ``model.safetensors``;
    ``config`` (a timm hub model's config.json) is written when given. With
    ``HF_HUB_OFFLINE=1`` timm then loads exactly these tensors, with no network: how
    tests (and air-gapped machines, from a copied cache) use published weights.
    """
    import json

    from safetensors.torch import save_file

    root = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    return path
