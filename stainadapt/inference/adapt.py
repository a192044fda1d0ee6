"""Test-time adaptation: a trained network re-fits its BatchNorm to the images it predicts.

A BatchNorm network normalises every feature with running statistics collected on its
training images. Images of a stain, scanner or lab it never saw have other feature
statistics, and the fixed ones push its features out of range: on real PAS tiles a
BatchNorm model scores 0.04-0.07 Dice with its running statistics and 0.55-0.58 with
statistics re-estimated on the test tiles (docs/experiments.md). Two modes:

* ``bn`` (AdaBN, Li et al. 2016): every BatchNorm layer's running mean and variance are
  reset and re-estimated as the plain (cumulative, momentum ``None``) average over a
  sample of the images to predict, through
  :func:`stainadapt.models.batchnorm.recalibrate_batchnorm`. No weight changes.
* ``target``: no pass over the inputs; the target-stain statistics that a model trained
  with ``--target-statistics`` kept (domain-specific BatchNorm statistics, as in DSBN,
  Chang et al. 2019) replace the running ones. ``bn`` and ``tent`` re-estimate every
  statistic from the inputs instead, so for them the kept ones play no part.
* ``tent`` (Wang et al. 2021): AdaBN, then ``steps`` steps of Adam (``lr`` 1e-3) on the
  BatchNorm weights and biases only, minimising the mean per-pixel entropy of the
  sigmoid output, ``H(p) = -p log p - (1 - p) log(1 - p)``, on batches of the same sample
  (in a seeded order). During those steps the BatchNorm layers normalise with each
  batch's own statistics and leave the running statistics AdaBN set untouched
  (``track_running_stats`` is off for the steps); every other layer stays in eval mode.
  The loop always stops after ``steps`` steps: no convergence test, so its cost is known.
  Prediction then runs in eval mode with the AdaBN statistics and the tuned affine terms.

The sample (:func:`sample_windows`, :mod:`.adapt_sample`): up to ``windows`` tissue
windows of the predictor's tile size, drawn in a seeded order, every input read as its
prediction reads it (slides at the model's resolution, glass judged by their tissue
map). The windows go through the predictor's own input path (stain normaliser, scaling
to [0, 1]: :meth:`SlidingWindowPredictor.model_input`), so the statistics describe what
the network sees when it predicts. The estimate runs in float32 (no autocast) and
without flips. Same inputs and seed, same sample, same statistics, same masks.

Statistics files are safetensors: the BatchNorm buffers ``<layer>.running_mean`` and
``<layer>.running_var`` (plus ``<layer>.weight`` / ``<layer>.bias`` after ``tent``),
with the settings as metadata. :func:`read_adapted_state` checks that a file fits the
model. The prediction side (scopes, files beside the masks, torchrun) is
:mod:`.adapt_files`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_save
from ..errors import InputError
from ..models.batchnorm import batchnorm_layers, recalibrate_batchnorm
from .adapt_sample import sample_windows

__all__ = [
    "ADAPT_MODES",
    "ADAPT_SCOPES",
    "AdaptResult",
    "AdaptSettings",
    "adapt_model",
    "adapted_state",
    "apply_adapted_state",
    "entropy_from_logits",
    "kept_target_statistics",
    "read_adapted_state",
    "sample_windows",
    "save_adapted_state",
]

#: ``none``: the running statistics as trained; ``bn``: AdaBN; ``tent``: AdaBN + TENT;
#: ``target``: the target-stain statistics the model kept in training (no pass).
ADAPT_MODES = ("none", "bn", "tent", "target")
#: ``file``: each input adapts to itself; ``call``: one set for every input of a call.
ADAPT_SCOPES = ("file", "call")

_FORMAT = "stainadapt-adapted-stats"


@dataclass(frozen=True)
class AdaptSettings:
    """How a model adapts at test time (the ``--adapt*`` flags of ``stainadapt predict``).

    ``windows``: the most windows (or whole images, in evaluation) in the sample;
    ``steps``: TENT's optimiser steps (``tent`` only); ``lr``: TENT's Adam rate;
    ``batch_size``: windows per forward pass of the estimate and of each TENT step.
    """

    mode: str = "bn"
    scope: str = "call"
    windows: int = 64
    steps: int = 10
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES:
            raise InputError(f"--adapt {self.mode}: must be one of {', '.join(ADAPT_MODES)}")
        if self.scope not in ADAPT_SCOPES:
            raise InputError(
                f"--adapt-scope {self.scope}: must be one of {', '.join(ADAPT_SCOPES)}"
            )
        if self.windows < 1:
            raise InputError(f"--adapt-windows {self.windows}: must be at least 1")
        if self.steps < 0:
            raise InputError(f"--adapt-steps {self.steps}: must be at least 0")
        if not self.lr > 0:
            raise InputError(f"adaptation lr {self.lr}: must be positive")
        if self.batch_size < 1:
            raise InputError(f"adaptation batch size {self.batch_size}: must be at least 1")

    @classmethod
    def parse(cls, adapt: str | AdaptSettings | None) -> AdaptSettings | None:
        """``None`` for no adaptation; a mode name (``"bn"``) with default settings."""
        if adapt is None or isinstance(adapt, AdaptSettings):
            return None if adapt is None or adapt.mode == "none" else adapt
        settings = cls(mode=str(adapt))
        return None if settings.mode == "none" else settings

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (TENT's fields only for ``tent``)."""
        out: dict[str, Any] = {"mode": self.mode, "scope": self.scope,
                               "windows": self.windows, "seed": self.seed}
        if self.mode == "tent":
            out.update(steps=self.steps, lr=self.lr)
        return out


@dataclass
class AdaptResult:
    """What :func:`adapt_model` did: sample size, batches, TENT steps, layers adapted."""

    mode: str
    windows: int = 0
    batches: int = 0
    steps: int = 0
    layers: int = 0
    losses: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- the sample


# --------------------------------------------------------------------------- adaptation


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary entropy (nats) of ``sigmoid(logits)``, same shape, stable.

    ``H = p * softplus(-z) + (1 - p) * softplus(z)`` with ``p = sigmoid(z)``.
    """
    p = torch.sigmoid(logits)
    return p * nn.functional.softplus(-logits) + (1 - p) * nn.functional.softplus(logits)


def _batches(windows: Sequence[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of ``windows`` grouped into batches of one shape; a lone last window joins
    the batch before it (BatchNorm cannot estimate from one value per channel)."""
    groups: list[list[int]] = []
    for i, w in enumerate(windows):
        if groups and len(groups[-1]) < batch_size and windows[groups[-1][0]].shape == w.shape:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) > 1 and len(groups[-1]) == 1 and \
            windows[groups[-2][0]].shape == windows[groups[-1][0]].shape:
        groups[-2].extend(groups.pop())
    return groups


def adapt_model(
    model: nn.Module,
    windows: Sequence[torch.Tensor] | torch.Tensor,
    settings: AdaptSettings,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> AdaptResult:
    """Adapt ``model`` in place to ``windows`` (module docstring); leaves it in eval mode.

    ``windows``: uint8 ``(3, T, T)`` tensors (or one ``(N, 3, T, T)`` tensor), on any
    device; ``prepare`` turns a uint8 batch ``(B, 3, T, T)`` on ``device`` into the
    model's input (:meth:`SlidingWindowPredictor.model_input`). ``progress(what, done,
    total)`` after each batch. A model without BatchNorm layers is left as it was
    (``result.layers == 0``).
    """
    layers = batchnorm_layers(model)
    result = AdaptResult(settings.mode, windows=len(windows), layers=len(layers))
    if settings.mode == "target":  # no pass: the statistics kept in training
        apply_adapted_state(model, kept_target_statistics(model))
        model.eval()
        return result
    if not layers or settings.mode == "none" or len(windows) == 0:
        return result
    device = torch.device(device)
    groups = _batches(list(windows), settings.batch_size)

    def batch(idx: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return prepare(torch.stack([windows[i] for i in idx]).to(device))

    def stream() -> Iterator[torch.Tensor]:
        for k, idx in enumerate(groups):
            yield batch(idx)
            if progress is not None:
                progress("adapting BatchNorm", k + 1, len(groups))

    result.batches = recalibrate_batchnorm(model, stream())
    if settings.mode == "tent" and settings.steps > 0:
        result.losses = _tent(model, layers, groups, batch, settings, progress)
        result.steps = len(result.losses)
    model.eval()
    return result


def _tent(model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm],
          groups: list[list[int]], batch: Callable[[list[int]], torch.Tensor],
          settings: AdaptSettings,
          progress: Callable[[str, int, int], None] | None) -> list[float]:
    """``settings.steps`` Adam steps on the BatchNorm affine terms; the losses per step."""
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    if not params:
        return []
    wanted = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    optimiser = torch.optim.Adam(params, lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    model.eval()
    for m in layers:  # batch statistics, running ones untouched
        m.train()
        m.track_running_stats = False
    losses: list[float] = []
    order: list[int] = []
    try:
        for step in range(settings.steps):
            if not order:
                order = torch.randperm(len(groups), generator=generator).tolist()
            x = batch(groups[order.pop(0)])
            with torch.enable_grad():
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
                loss = entropy_from_logits(logits.float()).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress("adapting (tent)", step + 1, settings.steps)
    finally:
        for m in layers:
            m.track_running_stats = True
        model.eval()
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None
    return losses


# --------------------------------------------------------------------------- state files


def kept_target_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The target statistics ``model`` kept in training (``train --target-statistics``).

    ``load_model`` reads them from the run folder's ``target-stats.safetensors``; a model
    without them is an :class:`InputError` saying how to get some.
    """
    kept = getattr(model, "target_statistics", None)
    if not kept:
        raise InputError("the model kept no target statistics (train it with "
                         "--target-statistics and a --target; or adapt with --adapt bn)")
    return kept


def adapted_state(model: nn.Module, mode: str = "bn") -> dict[str, torch.Tensor]:
    """The entries adaptation changes, as CPU tensors keyed like ``model.state_dict()``.

    Every BatchNorm layer's ``running_mean`` and ``running_var``, plus ``weight`` and
    ``bias`` for ``tent``.
    """
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    for m in batchnorm_layers(model):
        prefix = f"{names[id(m)]}." if names[id(m)] else ""
        out[prefix + "running_mean"] = m.running_mean.detach().cpu().clone()
        out[prefix + "running_var"] = m.running_var.detach().cpu().clone()
        if mode == "tent":
            for key in ("weight", "bias"):
                p = getattr(m, key)
                if p is not None:
                    out[prefix + key] = p.detach().cpu().clone()
    return out


def apply_adapted_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`adapted_state`) into ``model``'s tensors, in place."""
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in state.items():
            target = own[key]
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def save_adapted_state(path: str | Path, state: dict[str, torch.Tensor],
                       metadata: dict[str, Any]) -> Path:
    """Write ``state`` to a safetensors file atomically; ``metadata`` as one JSON entry."""
    from safetensors.torch import save_file

    # One metadata entry: safetensors writes several in no fixed order, and the same
    # statistics should give the same bytes.
    meta = {_FORMAT: json.dumps(metadata, sort_keys=True)}
    tensors = {k: v.contiguous() for k, v in sorted(state.items())}
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_adapted_state(path: str | Path, model: nn.Module
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A statistics file written by :func:`save_adapted_state`, checked against ``model``.

    Every BatchNorm layer's running statistics must be there, every key must be one of
    those adaptation changes, and every shape must fit; else an :class:`InputError`
    naming the file. Returns ``(state, metadata)``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such statistics file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise InputError(f"{path}: not a safetensors statistics file "
                         f"({type(exc).__name__}: {exc})".splitlines()[0]) from None
    try:
        meta = json.loads(raw_meta[_FORMAT])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: not a file of adapted statistics (written by predict "
                         "--adapt)")
    allowed = adapted_state(model, "tent")
    required = adapted_state(model, "bn")
    if not required:
        raise InputError(f"{path}: the model has no BatchNorm layers to take these statistics")
    missing = sorted(set(required) - set(state))
    unknown = sorted(set(state) - set(allowed))
    if missing or unknown:
        what = f"missing {missing[0]}" if missing else f"unknown {unknown[0]}"
        n = len(missing) or len(unknown)
        raise InputError(f"{path}: statistics do not fit this model ({what}"
                         f"{f' and {n - 1} more' if n > 1 else ''})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(allowed[key].shape):
            raise InputError(f"{path}: statistics do not fit this model ({key} has shape "
                             f"{tuple(value.shape)}, the model {tuple(allowed[key].shape)})")
    return state, meta
