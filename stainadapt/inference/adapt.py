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
* ``tent`` (Wang et al. 2021): AdaBN, then ``steps`` steps of Adam (``lr`` 1e-3) on the
  BatchNorm weights and biases only, minimising the mean per-pixel entropy of the
  sigmoid output, ``H(p) = -p log p - (1 - p) log(1 - p)``, on batches of the same sample
  (in a seeded order). During those steps the BatchNorm layers normalise with each
  batch's own statistics and leave the running statistics AdaBN set untouched
  (``track_running_stats`` is off for the steps); every other layer stays in eval mode.
  The loop always stops after ``steps`` steps: no convergence test, so its cost is known.
  Prediction then runs in eval mode with the AdaBN statistics and the tuned affine terms.

The sample (:func:`sample_windows`): up to ``windows`` windows of the predictor's tile
size, drawn in a seeded order from the windows that cover each input with the least
overlap; windows of background glass (the predictor's ``min_tissue`` test) are passed
over. Slides and large TIFFs are read as their prediction reads them
(:func:`.slides.plan_slide`): at the model's resolution, window by window, with the
slide's tissue map saying what is glass, so memory holds the sample, never the slide
and the windows are the ones the model will see. The windows go through the predictor's own
input path (stain normaliser, scaling to [0, 1]: :meth:`SlidingWindowPredictor.
model_input`), so the statistics describe what the network sees when it predicts. The
estimate runs in float32 (no autocast) and without flips. Same inputs and seed, same
sample, same statistics, same masks.

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

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_save
from ..errors import InputError
from ..models.batchnorm import batchnorm_layers, recalibrate_batchnorm
from .windows import window_starts, window_tissue_fraction

__all__ = [
    "ADAPT_MODES",
    "ADAPT_SCOPES",
    "AdaptResult",
    "AdaptSettings",
    "adapt_model",
    "adapted_state",
    "apply_adapted_state",
    "entropy_from_logits",
    "read_adapted_state",
    "sample_windows",
    "save_adapted_state",
]

#: ``none``: the running statistics as trained; ``bn``: AdaBN; ``tent``: AdaBN + TENT.
ADAPT_MODES = ("none", "bn", "tent")
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


def _candidates(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Window starts ``(y, x)``, row-major, covering an image with the least overlap
    (padded below a tile, as the predictor pads)."""
    h, w = max(shape[0], tile), max(shape[1], tile)
    return [(y, x) for y in window_starts(h, tile, 0) for x in window_starts(w, tile, 0)]


def _pad(window: np.ndarray, tile: int) -> np.ndarray:
    """``(tile, tile, 3)``: symmetric padding at the bottom/right, as the predictor pads."""
    h, w = window.shape[:2]
    if h == tile and w == tile:
        return window
    return np.pad(window, ((0, tile - h), (0, tile - w), (0, 0)), mode="symmetric")


class _Source:
    """Windows of one PNG/JPEG or small TIFF, read whole (as the predictor reads it).

    ``positions``: the candidate windows; ``judged``: the tissue test was made on them
    already (the pixels need not be tested again).
    """

    judged = False

    def __init__(self, path: Path, tile: int) -> None:
        from ..data.io import image_shape

        self.path, self.tile = path, tile
        self.shape = image_shape(path)
        self.positions = _candidates(self.shape, tile)

    def read(self, positions: list[tuple[int, int]]) -> list[np.ndarray]:
        from ..data.io import read_image

        image, t = read_image(self.path), self.tile
        return [_pad(image[y:y + t, x:x + t], t) for y, x in positions]


class _SlideSource(_Source):
    """Windows of a slide or streamed TIFF, read as :func:`.slides.predict_slide` reads
    them: through the slide reader at the model's resolution (:func:`.slides.plan_slide`),
    window by window, so memory holds the sample, never the slide.

    With a tissue map (the one prediction skips glass with) the candidates are only the
    windows with ``min_tissue`` of tissue under it; the map is made once, here, and the
    slide is closed between rounds.
    """

    def __init__(self, path: Path, tile: int, min_tissue: float,
                 model_mpp: float | None, fallback_mpp: float | None) -> None:
        from .slides import plan_slide

        self.path, self.tile = path, tile
        self._mpp = (model_mpp, fallback_mpp)
        plan = plan_slide(path, model_mpp, fallback_mpp, tissue=min_tissue > 0)
        try:
            self.shape = plan.reader.shape
            self.positions = _candidates(self.shape, tile)
            judge = plan.reader.tissue_fraction
            if judge is not None:
                self.positions = [(y, x) for y, x in self.positions
                                  if judge(y, x, tile) >= min_tissue]
                self.judged = True
        finally:
            plan.close()

    def read(self, positions: list[tuple[int, int]]) -> list[np.ndarray]:
        from .slides import plan_slide

        plan = plan_slide(self.path, *self._mpp, tissue=False)
        try:
            (h, w), t = self.shape, self.tile
            return [_pad(plan.view.read_box(x, y, min(t, w - x), min(t, h - y)), t)
                    for y, x in positions]
        finally:
            plan.close()


def _open_source(path: Path, tile: int, min_tissue: float, stream_min_pixels: int,
                 model_mpp: float | None, fallback_mpp: float | None) -> _Source:
    """The source of ``path``: streamed as :func:`.paths.predict_paths` streams it (a
    scanner slide, or a TIFF of at least ``stream_min_pixels``), else read whole."""
    from ..data.io import TIFF_EXTS, image_shape
    from ..data.slides import SLIDE_EXTS

    suffix = path.suffix.lower()
    streamed = suffix in SLIDE_EXTS
    if suffix in TIFF_EXTS:
        h, w = image_shape(path)
        streamed = h * w >= stream_min_pixels
    if streamed:
        return _SlideSource(path, tile, min_tissue, model_mpp, fallback_mpp)
    return _Source(path, tile)


def sample_windows(
    paths: Sequence[str | Path],
    tile: int,
    count: int,
    seed: int = 0,
    min_tissue: float = 0.01,
    stream_min_pixels: int = 4096 * 4096,
    model_mpp: float | None = None,
    fallback_mpp: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """A seeded sample of up to ``count`` tissue windows ``(N, tile, tile, 3) uint8``.

    Positions: the ``tile`` windows that cover every file with the least overlap (files
    smaller than a tile padded as the predictor pads them), all files pooled, in an
    order drawn from ``seed``; a window whose tissue fraction is below ``min_tissue``
    is passed over. Slides and TIFFs of at least ``stream_min_pixels`` are read as
    prediction reads them: at ``model_mpp`` (the model's resolution; ``fallback_mpp``
    for a slide that records none), with the slide's tissue map deciding what is glass
    (:class:`_SlideSource`). Candidates are read in rounds, each file opened once per
    round. A file that cannot be read is left out (its prediction reports why).
    Returns the windows and notes (files left out; fewer windows than asked).
    """
    notes: list[str] = []
    sources: list[_Source] = []
    for p in map(Path, paths):
        try:
            sources.append(_open_source(p, tile, min_tissue, stream_min_pixels, model_mpp,
                                        fallback_mpp))
        except Exception as exc:  # reported again by the prediction of that file
            notes.append(f"{p.name}: left out of the adaptation sample ({exc})".splitlines()[0])
    sizes = np.array([len(src.positions) for src in sources], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    order = np.random.default_rng(seed).permutation(int(offsets[-1]))
    stride = 4 if tile >= 64 else 1
    kept: list[np.ndarray] = []
    failed: set[int] = set()
    pos = 0
    while len(kept) < count and pos < len(order):
        chunk = order[pos:pos + max(2 * (count - len(kept)), 8)]
        pos += len(chunk)
        by_file: dict[int, list[tuple[int, tuple[int, int]]]] = {}
        for rank, flat in enumerate(chunk.tolist()):
            f = int(np.searchsorted(offsets, flat, side="right") - 1)
            if f not in failed:
                by_file.setdefault(f, []).append((rank, sources[f].positions[flat - offsets[f]]))
        got: dict[int, np.ndarray] = {}
        for f, items in sorted(by_file.items()):
            try:
                windows = sources[f].read([yx for _, yx in items])
            except Exception as exc:
                notes.append(f"{sources[f].path.name}: left out of the adaptation sample "
                             f"({type(exc).__name__}: {exc})".splitlines()[0])
                failed.add(f)
                continue
            test = min_tissue > 0 and not sources[f].judged
            for (rank, _), window in zip(items, windows, strict=True):
                if not test or window_tissue_fraction(window, stride) >= min_tissue:
                    got[rank] = window
        for rank in sorted(got):
            if len(kept) < count:
                kept.append(got[rank])
    if not kept:
        return np.zeros((0, tile, tile, 3), np.uint8), notes
    if len(kept) < count:
        notes.append(f"adaptation sample: all {len(kept)} tissue window(s) of {tile} px the "
                     f"input(s) hold, fewer than --adapt-windows {count}")
    return np.stack(kept), notes


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
