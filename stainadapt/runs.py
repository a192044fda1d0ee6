"""Run-folder model files: ``model.safetensors`` + ``model.json``, written atomically.

A trained model is two files in the run folder, so ``predict`` needs nothing else:

* ``model.safetensors``: the state dict of :class:`~stainadapt.models.unet.SegmentationNet`
  (safetensors: no pickle, so loading a model from someone else runs no code);
* ``model.json``: how to rebuild the network and use it (``backbone``, ``image_size``,
  ``mpp`` (microns per pixel G works at, or null), ``downsample`` (how many times
  coarser than the training tiles G sees them, 1 for none), ``threshold``,
  ``decoder_channels``, ``normalizer``, ``stainadapt_version``, ``mode``, ``discs``,
  ``encoder``: the resolved timm architecture and the starting weights' tag and sha256,
  ``input_norm``: the mean/std G applies to its input, or null).

Both are written atomically (:mod:`stainadapt.atomic`): a run killed mid-write leaves
the old file or the new one, never half of one. ``model.safetensors`` is written before
``model.json``, so a ``model.json`` always describes complete weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text
from .errors import InputError, RunFailure

__all__ = [
    "MODEL_WEIGHTS",
    "non_finite",
    "require_finite",
    "MODEL_META",
    "meta_defaults",
    "meta_downsample",
    "save_model",
    "load_model",
    "read_meta",
    "read_weights",
    "TARGET_STATS",
    "normalizer_to_meta",
    "normalizer_from_meta",
]

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
#: BatchNorm statistics of the target stain (``train --target-statistics``), in the
#: format of test-time adapted statistics (inference/adapt.py): ``predict --adapt target``.
TARGET_STATS = "target-stats.safetensors"


# --------------------------------------------------------------------------- finiteness


def _tensors(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every floating-point tensor in a (nested) state dict, with a dotted name."""
    import torch

    if isinstance(value, torch.Tensor):
        return [(prefix, value)] if value.is_floating_point() else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    out: list[tuple[str, Any]] = []
    for key, item in items:
        out.extend(_tensors(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def non_finite(state: Any) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or infinity.

    One host sync for the whole state (the per-tensor checks are stacked on the device),
    so it is cheap enough to run before every save.
    """
    import torch

    named = _tensors(state)
    if not named:
        return []
    by_device: dict[Any, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    bad: list[str] = []
    for idx in by_device.values():
        ok = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).cpu().tolist()
        bad.extend(named[i][0] for i, good in zip(idx, ok, strict=True) if not good)
    return bad


def require_finite(state: Any, what: str) -> None:
    """Refuse to write NaN/inf weights: :class:`RunFailure` naming the first bad tensors.

    A diverged run must never replace a good checkpoint with a poisoned one; the trainer
    rolls back before it gets here, so this is the last line of defence.
    """
    bad = non_finite(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise RunFailure(f"{what}: refusing to write non-finite (NaN/inf) weights ({shown})")


# --------------------------------------------------------------------------- normaliser


def normalizer_to_meta(spec: str, normalizer: Any) -> dict[str, Any]:
    """The ``normalizer`` entry of model.json: ``{"spec": str, "state": {name: list}}``."""
    state = {k: v.detach().cpu().tolist() for k, v in normalizer.state_dict().items()}
    return {"spec": spec, "state": state}


def normalizer_from_meta(entry: dict[str, Any] | None, device: Any = "cpu") -> Any:
    """Rebuild a fitted normaliser from its model.json entry (``None`` -> ``None``)."""
    if not entry:
        return None
    import torch

    from .registry import create

    norm = create("normalizers", entry["spec"])
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in entry.get("state", {}).items()}
    if state:
        norm.load_state_dict(state)
    return norm.to(device) if hasattr(norm, "to") else norm


# --------------------------------------------------------------------------- model


def meta_defaults(model: Any) -> dict[str, Any]:
    """Every model.json field with the value :func:`save_model` writes when not given.

    ``backbone`` and ``decoder_channels`` come from the model's own attributes and
    ``stainadapt_version`` from the installed package.
    """
    from .data.resample import model_downsample
    from .version import __version__

    return {
        "backbone": getattr(model, "backbone_name", None),
        "image_size": None,
        "mpp": None,
        "downsample": model_downsample(model),
        "threshold": 0.5,
        "decoder_channels": list(getattr(model, "decoder_channels", ()) or ()) or None,
        "norm": getattr(model, "norm", "batch"),
        "normalizer": None,
        "stainadapt_version": __version__,
        "mode": None,
        "discs": [],
        # how to rebuild the encoder offline and the weights it started from
        # (models/encoders.py encoder_record), and the input normalisation in G
        "encoder": getattr(model, "encoder_record", None),
        "input_norm": getattr(model, "input_stats", None),
    }


def save_model(run_dir: str | os.PathLike[str], model: Any, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir``; returns the JSON path.

    ``meta`` holds the keys listed in docs/CONTRACTS.md; ``backbone`` and
    ``decoder_channels`` default to the model's own attributes and ``stainadapt_version``
    to the installed version, so a caller may pass only what the model cannot know.
    Weights holding NaN or infinity are refused (:class:`RunFailure`); nothing is written.
    """
    from safetensors.torch import save as st_save

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    # Clone: safetensors refuses tensors sharing storage, and CPU copies free the device.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    require_finite(tensors, str(run / MODEL_WEIGHTS))
    full = meta_defaults(model)
    full.update(meta)
    if full["decoder_channels"] is not None:
        full["decoder_channels"] = [int(c) for c in full["decoder_channels"]]
    if not full["backbone"]:
        raise ValueError("save_model: meta has no 'backbone' and the model no .backbone_name")
    text = json.dumps(full, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(run / MODEL_WEIGHTS, st_save(tensors, metadata={"format": "pt"}))
    return atomic_write_text(run / MODEL_META, text)


def _run_folder(run_dir: str | os.PathLike[str]) -> Path:
    run = Path(run_dir)
    if run.is_file() and run.name in (MODEL_WEIGHTS, MODEL_META):
        run = run.parent
    if not (run / MODEL_WEIGHTS).is_file():
        raise InputError(f"{run}: no {MODEL_WEIGHTS}; is this a stainadapt run folder?")
    return run


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a run folder (InputError when missing or invalid)."""
    run = _run_folder(run_dir)
    path = run / MODEL_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; the run folder has weights but no model.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("backbone"), str):
        raise InputError(f"{path}: no 'backbone' entry; is this a stainadapt model.json?")
    return meta


def read_weights(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """G's tensors from a run folder's ``model.safetensors``, on the CPU, no network built.

    For callers that already have the network (``train --init``); :func:`load_model`
    builds one from ``model.json`` and fills it with these.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = _run_folder(run_dir) / MODEL_WEIGHTS
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights}: unreadable safetensors file ({exc})") from None


def meta_downsample(meta: dict[str, Any]) -> float:
    """How many times coarser than its training tiles a model sees them (``model.json``'s
    ``downsample``; 1 for runs that predate the key)."""
    return float(meta.get("downsample") or 1.0)


def load_model(run_dir: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the network of a run folder: ``(SegmentationNet in eval mode, meta)``.

    Reads only ``model.safetensors``, ``model.json`` and, where the run kept them, the
    target statistics of ``target-stats.safetensors`` (no pickle), and nothing from the
    network: a timm or hub encoder is rebuilt from model.json's ``encoder`` record, the
    input normalisation from its ``input_norm``. An unknown backbone is refused with the
    closest names; weights that do not fit the network are refused naming the file.
    """
    run = _run_folder(run_dir)
    meta = read_meta(run)

    import torch

    from .errors import PluginError
    from .models.encoders import parse_backbone
    from .models.unet import SegmentationNet
    from .registry import plugin_names

    backbone = meta["backbone"]
    kwargs: dict[str, Any] = {"backbone": backbone, "pretrained": None}
    record = meta.get("encoder")
    # A plugin name rebuilds through its plugin (as runs before the record did); any
    # other backbone from the record, offline; a record-less timm name by name.
    try:
        plugin = parse_backbone(backbone)[0] in plugin_names("backbones")
    except PluginError:
        plugin = False
    if isinstance(record, dict) and not plugin:
        kwargs["encoder_record"] = record
    if meta.get("decoder_channels"):
        kwargs["decoder_channels"] = tuple(int(c) for c in meta["decoder_channels"])
    if meta.get("norm", "batch") != "batch":  # runs before the field are BatchNorm
        kwargs["norm"] = meta["norm"]
    if meta.get("input_norm"):  # runs without it take the input as it comes
        kwargs["input_norm"] = meta["input_norm"]
    try:
        model = SegmentationNet(**kwargs)
    except PluginError as exc:
        raise InputError(f"{run / MODEL_META}: {exc}") from exc
    weights = run / MODEL_WEIGHTS
    state = read_weights(run)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(
            f"{weights}: weights do not fit a {backbone} SegmentationNet "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None
    model.to(torch.device(device)).eval()
    model.downsample = meta_downsample(meta)
    if (run / TARGET_STATS).is_file():  # train --target-statistics: predict --adapt target
        from .inference.adapt import read_adapted_state

        kept = read_adapted_state(run / TARGET_STATS, model)[0]
        model.target_statistics = {k: v.to(torch.device(device)) for k, v in kept.items()}
    return model, meta
