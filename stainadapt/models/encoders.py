"""Naming an encoder: a backbones plugin, any timm CNN, or a timm model on the hub.

``--backbone`` resolves in this order:

1. a registered backbones plugin (``resnet34``, ``efficientnet_b0``, a third party's);
2. a timm name, with or without a weights tag (``resnet34.a1_in1k``, ``convnext_tiny``,
   ``regnetx_002``); options after ``:`` are ``timm.create_model`` arguments
   (``convnext_tiny:drop_path_rate=0.1``);
3. ``timm:hf_hub=org/name`` (or timm's own ``hf-hub:org/name``, rewritten to it): a timm
   model on the Hugging Face hub. ``timm:name=NAME`` names a timm model explicitly, for
   a name a plugin shadows.

The resolved architecture is recorded (:func:`encoder_record`, model.json's ``encoder``)
so that a run rebuilds offline (:func:`encoder_from_record`): timm name, the levels
chosen, extra model arguments, whether G adds a stem, and the weights it started from
(tag, file, sha256) with the input normalisation those weights expect.

>>> parse_backbone("hf-hub:timm/resnet18.a1_in1k")
('timm', {'hf_hub': 'timm/resnet18.a1_in1k'})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PluginError
from ..registry import create, parse_spec, plugin_names
from .backbones import PUBLISHED, timm_backbone
from .hub import HUB_PREFIX, cached_weights, published_cfg, sha256_file

__all__ = ["parse_backbone", "timm_name", "build_encoder", "encoder_record", "safe_model_args",
           "encoder_from_record", "InputNormalization", "input_stats", "weights_status"]

#: The spec name of the generic timm path (``timm:name=...`` / ``timm:hf_hub=...``).
TIMM = "timm"


def parse_backbone(spec: str) -> tuple[str, dict[str, Any]]:
    """``parse_spec`` for backbones, plus timm's ``hf-hub:org/name`` as ``timm:hf_hub=``."""
    text = spec.strip() if isinstance(spec, str) else spec
    if isinstance(text, str) and text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):].strip()
        if not repo or "," in repo or "=" in repo:
            raise PluginError(f"backbone {spec!r}: expected hf-hub:org/name")
        return TIMM, {"hf_hub": repo}
    return parse_spec(text)


def timm_name(spec: str) -> tuple[str | None, dict[str, Any]]:
    """The timm model a backbone spec names and its extra options; ``(None, {})`` for a
    registered plugin. Hub models come back as ``hf-hub:org/name``."""
    name, options = parse_backbone(spec)
    if name in plugin_names("backbones"):
        return None, {}
    if name == TIMM:
        repo, plain = options.pop("hf_hub", None), options.pop("name", None)
        if (repo is None) == (plain is None):
            raise PluginError(f"backbone {spec!r}: give exactly one of timm:name=NAME or "
                              "timm:hf_hub=org/name")
        name = f"{HUB_PREFIX}{repo}" if repo else str(plain)
    return name, options


#: ``create_model`` arguments an encoder spec or record may not set: they load files or
#: weights, or are stainadapt's to choose. model.json is data; it must not make timm read
#: a checkpoint (timm unpickles those) or reach the network.
RESERVED_ARGS = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
    "cache_dir", "features_only", "out_indices", "feature_cfg", "feature_cls",
    "scriptable", "exportable", "no_jit"})


def safe_model_args(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``args`` checked as plain ``create_model`` arguments (scalars or lists of them)."""
    out: dict[str, Any] = {}
    for key, value in dict(args).items():
        if key in RESERVED_ARGS:
            raise PluginError(f"{where}: the encoder option {key!r} cannot be set here")
        items = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, bool | int | float | str) for v in items):
            raise PluginError(f"{where}: encoder option {key}={value!r} is not a plain value")
        out[str(key)] = value
    return out


def build_encoder(spec: str, pretrained: str | None = None, in_chans: int = 3) -> nn.Module:
    """The encoder a ``--backbone`` spec names (see the module docstring for the order)."""
    source, options = timm_name(spec)
    if source is None:
        extra: dict[str, Any] = {"pretrained": pretrained}
        if in_chans != 3:
            extra["in_chans"] = in_chans
        return create("backbones", spec, **extra)
    in_chans = int(options.pop("in_chans", in_chans))
    options = safe_model_args(options, f"backbone {spec!r}")
    model = timm_backbone(source, pretrained, in_chans, model_args=options)
    model.timm_model_args = dict(options)
    return model


def input_stats(encoder: nn.Module, pretrained: str | None) -> dict[str, list[float]] | None:
    """Mean and std (RGB, 0..1 scale) the encoder's weights expect; None for random init.

    They come from the model's timm ``pretrained_cfg`` (for a local file: the cfg of the
    name it was given for, whose published weights such a file usually holds).
    """
    if not pretrained:
        return None
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std:
        return None
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _weights_entry(encoder: nn.Module, pretrained: str | None) -> dict[str, Any]:
    cfg = dict(getattr(encoder, "pretrained_cfg", None) or {})
    if not pretrained:
        return {"source": "random"}
    entry: dict[str, Any] = {"source": "published" if pretrained in PUBLISHED else "file",
                             "tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id")}
    path = cached_weights(cfg) if pretrained in PUBLISHED else Path(pretrained)
    if path is not None and path.is_file():
        entry["file"] = str(path)
        entry["sha256"] = sha256_file(path)
    return entry


def encoder_record(encoder: nn.Module, pretrained: str | None) -> dict[str, Any] | None:
    """model.json's ``encoder``: how to rebuild the encoder offline, and its weights.

    ``{"timm_name", "out_indices", "model_args", "stem", "weights": {"source", "tag",
    "hf_hub_id", "file", "sha256"}}``; None for an encoder not built by timm_backbone
    (a third-party plugin rebuilds through its plugin).
    """
    indices = getattr(encoder, "timm_out_indices", None)
    if indices is None:
        return None
    name = str(getattr(encoder, "backbone_name", ""))
    args = dict(getattr(encoder, "timm_model_args", {}) or {})
    if name.startswith(HUB_PREFIX):  # the architecture behind the hub repo, offline later
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        try:
            from timm.models import load_model_config_from_hf

            _, arch, hub_args = load_model_config_from_hf(name[len(HUB_PREFIX):])
            args = {**(hub_args or {}), **args}
        except Exception:  # the config was read moments ago; without it, the cfg's name
            arch = cfg.get("architecture")
        name = str(arch or cfg.get("architecture") or name)
    return {"timm_name": name, "out_indices": [int(i) for i in indices], "model_args": args,
            "stem": bool(getattr(encoder, "needs_stem", False)),
            "weights": _weights_entry(encoder, pretrained)}


def encoder_from_record(record: Mapping[str, Any], in_chans: int = 3) -> nn.Module:
    """The encoder of a model.json ``encoder`` record, random weights, no network.

    The record is data: its timm name is looked up in timm's registry (a hub name, which
    would fetch a config, is refused), its model arguments must be plain values.
    """
    name = record.get("timm_name")
    indices = record.get("out_indices")
    if not isinstance(name, str) or ":" in name or "/" in name:
        raise PluginError(f"encoder record: timm_name {name!r} is not a timm model name")
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        raise PluginError(f"encoder record: out_indices {indices!r} is not a list of integers")
    args = safe_model_args(record.get("model_args") or {}, "encoder record")
    return timm_backbone(name, None, in_chans, out_indices=indices, model_args=args)


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, with the weights' statistics as buffers.

    ``x``: ``(B, C, H, W)`` in 0..1. The buffers are not in the state dict (model.json
    holds them), so a network's weights file is the same with or without this layer;
    exports trace them as constants.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self._stats = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise PluginError(f"input normalisation: bad mean {list(mean)} / std {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def stats(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` as given (model.json's ``input_norm``)."""
        return {k: list(v) for k, v in self._stats.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def weights_status(spec: str) -> dict[str, Any]:
    """Whether ``spec``'s published weights are in the local cache (no network).

    ``{"tag", "hf_hub_id", "cached": bool | None, "file", "mean", "std"}``; ``cached``
    is None when timm publishes none for it (or for a third-party plugin).
    """
    source, _ = timm_name(spec)
    if source is None:  # a registered plugin: the built-ins name their timm model
        source = parse_backbone(spec)[0]
    try:
        cfg = published_cfg(source)
    except Exception:
        cfg = {}
    if not cfg:
        return {"tag": None, "hf_hub_id": None, "cached": None, "file": None,
                "mean": None, "std": None}
    found = cached_weights(cfg)
    has_any = bool(cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file"))
    return {"tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id"),
            "cached": (found is not None) if has_any else None,
            "file": str(found) if found else None,
            "mean": list(cfg["mean"]) if cfg.get("mean") else None,
            "std": list(cfg["std"]) if cfg.get("std") else None}
