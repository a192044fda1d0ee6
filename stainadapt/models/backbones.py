"""Backbones: timm CNNs as 5-level feature pyramids (strides 2, 4, 8, 16, 32).

Any timm CNN that ``features_only=True`` supports can be used: the levels are chosen
from the model's own ``feature_info`` (channels and reductions are read, never
hard-coded); a pyramid that starts at stride 4 gets its stride-2 level from a stem in G.
``pretrained`` is ``None`` (random init), a local file (safetensors, or a torch state
dict read with ``weights_only=True``), or ``"imagenet"``/``"default"``: the model's
published weights through timm and the Hugging Face cache (:mod:`.encoders`).

Example::

    >>> enc = resnet18()
    >>> enc.feature_info.channels(), enc.feature_info.reduction()
    ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32])
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import InputError, PluginError
from .hub import HUB_PREFIX, weights_error

__all__ = [
    "STRIDES",
    "PUBLISHED",
    "timm_backbone",
    "choose_levels",
    "unknown_model_message",
    "load_local_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
]

#: The reductions of the five levels every backbone provides, shallow to deep.
STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)
#: ``pretrained`` values asking timm for the model's published weights.
PUBLISHED: tuple[str, ...] = ("imagenet", "default")


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


def _create(source: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(source, features_only=True, ...)`` with one-line errors."""
    try:
        return timm.create_model(source, features_only=True, **kwargs)
    except RuntimeError as exc:  # unknown model or tag, no features_only support
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if text.startswith(("Unknown model", "Invalid pretrained tag")):
            raise PluginError(unknown_model_message(source)) from exc
        if kwargs.get("pretrained"):
            raise
        raise PluginError(f"timm model {source!r}: {text}") from exc
    except (OSError, ValueError) as exc:  # a hub model's config.json: missing, gated
        if source.startswith(HUB_PREFIX) and not kwargs.get("pretrained"):
            raise weights_error(source, exc, "model config") from exc
        raise


def unknown_model_message(name: str) -> str:
    """One line for a name timm does not know, with the closest names it does know."""
    arch, _, tag = name.partition(".")
    if tag and timm.is_model(arch):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.0)
        listing = ", ".join(f"{arch}.{t}" for t in close) or f"{arch} (no published tags)"
        return f"timm model {arch!r} has no weights tag {tag!r}; tags it has: {listing}"
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else (
        "no close match; `python -c \"import timm; print(timm.list_models('*NAME*'))\"` "
        "lists the names")
    return f"unknown backbone {name!r} (neither a backbones plugin nor a timm model); {hint}"


def choose_levels(reductions: Sequence[int]) -> tuple[list[int], bool]:
    """Which of a model's feature levels G uses, and whether it needs a stride-2 stem.

    For every stride of :data:`STRIDES` the deepest level at that stride is chosen.
    A pyramid that starts at stride 4 (ConvNeXt and most recent designs) gives the
    levels at 4..32 and ``True``: G then makes f0 with a small learned stem. Raises
    :class:`PluginError` for a model without a multi-scale pyramid (ViT-style models,
    whose levels share one stride).
    """
    reductions = [int(r) for r in reductions]
    chosen: list[int] = []
    for stride in STRIDES:
        at = [i for i, r in enumerate(reductions) if r == stride]
        chosen.append(at[-1] if at else -1)
    if all(i >= 0 for i in chosen):
        return chosen, False
    if all(i >= 0 for i in chosen[1:]):
        return chosen[1:], True
    if len(set(reductions)) <= 1:
        level = reductions[0] if reductions else "?"
        raise PluginError(
            f"no multi-scale features: every level is at stride {level}"
            " (a ViT-style model); G needs a CNN pyramid at strides 4, 8, 16, 32 "
            "(docs/encoders.md says what an adapter for such models takes)")
    raise PluginError(f"feature levels at strides {reductions}; G needs levels at "
                      f"strides 4, 8, 16 and 32 (and 2, or a stem makes it)")


def timm_backbone(name: str, pretrained: str | None = None, in_chans: int = 3,
                  out_indices: Sequence[int] | None = None,
                  model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm model ``name`` as a ``features_only`` pyramid with levels at strides 2..32.

    ``name`` is any timm name, with or without a weights tag (``resnet34.a1_in1k``), or
    ``hf-hub:org/name`` for a timm model on the Hugging Face hub. The returned module
    maps ``(B, in_chans, H, W)`` to a list of five tensors at strides 2..32, or of four
    at strides 4..32 when the model's pyramid starts at stride 4 (``needs_stem`` is
    then True, and :class:`~stainadapt.models.unet.SegmentationNet` adds f0 with a
    learned stem); its ``feature_info`` gives their channels and reductions.

    ``pretrained``: ``None`` (random init), a local weights file, or ``"imagenet"`` /
    ``"default"`` -- the model's published weights through timm (Hugging Face cache;
    downloaded when not cached and the network is allowed; see :mod:`.encoders`).
    ``out_indices``: the levels to use (what model.json records); chosen from the
    model's ``feature_info`` when not given. ``model_args``: extra ``create_model``
    arguments (a hub model's config.json ``model_args``). Raises :class:`PluginError`
    for an unknown name or a model without a multi-scale pyramid.
    """
    kwargs: dict[str, Any] = {**(model_args or {}), "pretrained": False, "in_chans": in_chans}
    if out_indices is None:
        probe = _create(name, **kwargs)
        reductions = list(probe.feature_info.reduction())
        if reductions not in (list(STRIDES), list(STRIDES[1:])):
            # Every level the model has: the default features_only levels may skip some.
            probe = _create(name, out_indices=tuple(range(len(probe.feature_info.info))),
                            **kwargs)
            reductions = list(probe.feature_info.reduction())
        try:
            chosen, _ = choose_levels(reductions)
        except PluginError as exc:
            raise PluginError(f"timm model {name!r}: {exc}") from None
        indices = [probe.feature_info.out_indices[i] for i in chosen]
    else:
        indices = [int(i) for i in out_indices]
        probe = None
    if pretrained in PUBLISHED:
        model = _published(name, out_indices=tuple(indices), **kwargs)
    elif probe is not None and list(probe.feature_info.out_indices) == indices:
        model = probe
    else:
        model = _create(name, out_indices=tuple(indices), **kwargs)
    if pretrained and pretrained not in PUBLISHED:
        load_local_weights(model, pretrained, in_chans=in_chans)
    reductions = list(model.feature_info.reduction())
    if reductions not in (list(STRIDES), list(STRIDES[1:])):
        raise PluginError(f"timm model {name!r}: levels {indices} are at strides {reductions}; "
                          f"expected {list(STRIDES)} or {list(STRIDES[1:])}")
    model.backbone_name = name
    model.needs_stem = reductions[0] == 4
    model.timm_out_indices = indices
    return model


def _published(name: str, **kwargs: Any) -> nn.Module:
    """The model with its published weights (timm ``pretrained=True``), one-line errors."""
    kwargs["pretrained"] = True
    try:
        return _create(name, **kwargs)
    except PluginError:
        raise
    except Exception as exc:  # hub offline / gated / missing, URL errors, bad files
        raise weights_error(name, exc) from exc


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
