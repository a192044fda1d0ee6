"""Backbones: timm CNNs as 5-level feature pyramids (strides 2, 4, 8, 16, 32).

Any timm CNN that ``features_only=True`` supports can be used: the levels are chosen
from the model's own ``feature_info`` (channels and reductions are read, never
hard-coded). Weights are never downloaded: ``pretrained`` is a local file (safetensors,
or a torch state dict read with ``weights_only=True``) or ``None`` (random init).

Example::

    >>> enc = resnet18()
    >>> enc.feature_info.channels(), enc.feature_info.reduction()
    ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import InputError, PluginError

__all__ = [
    "STRIDES",
    "timm_backbone",
    "load_local_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
]

#: The reductions of the five levels every backbone provides, shallow to deep.
STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files, non-tensor content
            raise InputError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    # Common wrappers: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: expected a state dict (name -> tensor), got {type(state)}")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def load_local_weights(model: nn.Module, pretrained: str | Path, in_chans: int = 3) -> nn.Module:
    """Load ``pretrained`` (a local file) into ``model``; never downloads.

    Keys the model does not have (a classifier, for instance) are ignored; a first
    convolution trained on 3 channels is adapted to ``in_chans`` as timm does. Missing
    keys or other shape mismatches raise :class:`InputError` naming the file.
    """
    path = Path(pretrained)
    if not path.is_file():
        raise InputError(
            f"{path}: pretrained weights file not found (pretrained takes a local file; "
            "nothing is downloaded)"
        )
    state = _read_state_dict(path)
    own = model.state_dict()
    selected: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, target in own.items():
        if key not in state:
            continue
        value = state[key]
        if value.shape != target.shape:
            if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
                from timm.models import adapt_input_conv

                value = adapt_input_conv(in_chans, value)
            if value.shape != target.shape:
                mismatched.append(f"{key} {tuple(value.shape)} != {tuple(target.shape)}")
                continue
        selected[key] = value
    missing = [k for k in own if k not in selected and k not in {m.split()[0] for m in mismatched}]
    if mismatched or missing:
        problems = mismatched + [f"{k} missing" for k in missing]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(f"{path}: weights do not fit the model: {'; '.join(problems[:5])}{more}")
    model.load_state_dict(selected, strict=True)
    return model


def timm_backbone(name: str, pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """A timm model ``name`` as a ``features_only`` pyramid with levels at strides 2..32.

    The returned module maps ``(B, in_chans, H, W)`` to a list of five tensors; its
    ``feature_info`` gives their channels and reductions. Raises :class:`PluginError`
    when the model has no feature level at one of the strides.
    """
    kwargs = {"features_only": True, "pretrained": False, "in_chans": in_chans}
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as exc:  # timm: unknown model / no features_only support
        raise PluginError(f"timm model {name!r}: {exc}") from exc
    reductions = list(model.feature_info.reduction())
    if reductions != list(STRIDES):
        # Pick, for every stride, the deepest level at that stride.
        all_levels = timm.create_model(name, out_indices=tuple(range(len(reductions))), **kwargs)
        reductions = list(all_levels.feature_info.reduction())
        chosen = []
        for stride in STRIDES:
            at = [i for i, r in enumerate(reductions) if r == stride]
            if not at:
                raise PluginError(
                    f"timm model {name!r} has no feature level at stride {stride} "
                    f"(its levels: {reductions}); stainadapt needs strides {list(STRIDES)}"
                )
            chosen.append(at[-1])
        model = timm.create_model(name, out_indices=tuple(chosen), **kwargs)
    if pretrained:
        load_local_weights(model, pretrained, in_chans=in_chans)
    model.backbone_name = name
    return model


def resnet18(pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """ResNet-18 pyramid: channels (64, 64, 128, 256, 512)."""
    return timm_backbone("resnet18", pretrained, in_chans)


def resnet34(pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """ResNet-34 pyramid (the paper's encoder): channels (64, 64, 128, 256, 512)."""
    return timm_backbone("resnet34", pretrained, in_chans)


def resnet50(pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """ResNet-50 pyramid: channels (64, 256, 512, 1024, 2048)."""
    return timm_backbone("resnet50", pretrained, in_chans)


def efficientnet_b0(pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """EfficientNet-B0 pyramid: channels (16, 24, 40, 112, 320)."""
    return timm_backbone("efficientnet_b0", pretrained, in_chans)
