"""The normaliser base class: input checks, fitting, per-image statistics, chunked apply.

A concrete normaliser supplies its maths, all batched over images:

* ``_statistics(x)``: intensities ``(B, 3, K)`` (a pixel subsample; uint8 as given or
  float 0..255 in the compute dtype) ->
  ``(stats, valid)``; ``stats`` is a dict of ``(B, ...)`` tensors, ``valid`` ``(B,)`` bool
  says which images had enough tissue and a non-degenerate estimate;
* ``_set_reference(stats)``: store the statistics of one reference image (batch of 1)
  in the module's buffers;
* ``_params(stats)`` -> tuple of ``(B, ...)`` tensors (in the compute dtype), and
  ``_transform(x, params)``: intensities ``(B, 3, S)`` (0..255; uint8 as given, or
  float) -> normalised intensities ``(B, 3, S)`` (0..255, float);
* optionally ``exportable()``: its trace-friendly twin, so that ``stainadapt export``
  can bake it into a model (see :mod:`~stainadapt.normalizers.exportable`).

The built-ins (:class:`CoreNormalizer`) take all of these from one
functional core per method, which their twins share (:mod:`~stainadapt.normalizers.ops`).

The base class turns this into ``fit(reference)`` and ``forward(images)`` with one
contract for every normaliser: uint8 ``(3, H, W)`` or ``(B, 3, H, W)`` (or float in
0..1) in, the same dtype, shape and device out; statistics from a bounded seeded
subsample; the transform runs in pixel chunks so memory stays bounded; images with too
little tissue (or a degenerate estimate) pass through unchanged with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from .od import sample_pixels, tissue_from_intensity
from .ops import EAGER, Ops, PixelSample

__all__ = ["CoreNormalizer", "StainNormalizer", "TissueWarning", "as_batch", "not_exportable"]


class TissueWarning(UserWarning):
    """An image had too little tissue to estimate its stains; it was passed through."""


def as_batch(images: Any, allow_numpy: bool = False) -> tuple[Tensor, bool, bool]:
    """Check and view images as ``(B, 3, H, W)``.

    Returns ``(batch, squeezed, is_float)``: ``squeezed`` when the input was a single
    ``(3, H, W)`` image, ``is_float`` for floating inputs (taken as 0..1). With
    ``allow_numpy``, a numpy ``(H, W, 3)`` array (channels last, as image readers return)
    is accepted too.
    """
    if isinstance(images, np.ndarray):
        if not allow_numpy:
            raise InputError("normaliser input must be a torch tensor (B, 3, H, W) or (3, H, W)")
        if images.ndim != 3 or images.shape[2] != 3:
            raise InputError(f"numpy images must be (H, W, 3); got shape {images.shape}")
        arr = np.ascontiguousarray(images)
        if not arr.flags.writeable:  # torch refuses read-only memory
            arr = arr.copy()
        images = torch.from_numpy(arr).permute(2, 0, 1)
    if not isinstance(images, Tensor):
        raise InputError(f"normaliser input must be a tensor, got {type(images).__name__}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        hint = ""
        if images.ndim in (3, 4) and images.shape[-1] == 3:
            hint = " (channels last? use .permute to put channels before H and W)"
        raise InputError(
            f"normaliser input must be (3, H, W) or (B, 3, H, W); got {tuple(images.shape)}{hint}"
        )
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise InputError(
            f"normaliser input must be uint8 (0..255) or float (0..1); got {images.dtype}"
        )
    squeezed = images.ndim == 3
    batch = images.unsqueeze(0) if squeezed else images
    if batch.shape[-1] * batch.shape[-2] == 0:
        raise InputError(f"normaliser input is empty: shape {tuple(images.shape)}")
    return batch, squeezed, images.dtype.is_floating_point


def not_exportable(normalizer: Any) -> InputError:
    """The error for a normaliser that has no trace-friendly twin to export."""
    return InputError(
        f"cannot bake a {type(normalizer).__name__} normaliser into an exported model "
        "(it has no trace-friendly twin: its exportable() is not implemented); "
        "export without it (--no-normalizer) and normalise the images first"
    )


def _caller_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside torch and this package."""
    import os
    import sys

    skip = (os.path.dirname(torch.__file__), os.path.dirname(__file__))
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
        level += 1
    return level


def _to_intensity(x: Tensor, dtype: torch.dtype, is_float: bool) -> Tensor:
    if is_float:
        return x.to(dtype).clamp(0, 1).mul_(255.0)
    return x.to(dtype)


def _store(y: Tensor, dst: Tensor) -> None:
    """Write intensities ``y`` (0..255 float) into ``dst`` (uint8, or float 0..1)."""
    if dst.dtype == torch.uint8:
        dst.copy_(y.clamp_(0, 255).round_())  # copy_ converts: no uint8 temporary
    else:
        dst.copy_(y.div_(255.0).clamp_(0, 1))


class StainNormalizer(nn.Module):
    """Base class of the built-in normalisers (see the module docstring).

    Args:
        io: transmitted light intensity ``Io`` (background brightness), 0..255.
        beta: OD threshold; a pixel is tissue when all three ODs are at least ``beta``
            (natural-log OD: looser than the same number in log10 units).
        max_samples: statistics use at most this many pixels per image (seeded random
            positions); images with fewer pixels use all of them.
        min_tissue: an image whose tissue fraction (in the sample) is below this is
            passed through unchanged, with a :class:`TissueWarning`.
        seed: seed of the pixel subsample.
        chunk_pixels: pixels (over the whole batch) transformed at once; bounds memory.
    """

    #: (3, 2) stain vectors (columns, hematoxylin first) or None when not stain-based.
    stain_matrix: Tensor | None
    #: (2,) reference 99th-percentile concentrations, or None.
    max_concentrations: Tensor | None

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        max_samples: int = 2**14,
        min_tissue: float = 0.01,
        seed: int = 0,
        chunk_pixels: int = 2**22,
    ) -> None:
        super().__init__()
        if not 0 < io <= 255:
            raise InputError(f"io must be in (0, 255]; got {io}")
        if beta < 0:
            raise InputError(f"beta must be >= 0; got {beta}")
        if max_samples < 16 or chunk_pixels < 1:
            raise InputError("max_samples must be >= 16 and chunk_pixels >= 1")
        self.io = float(io)
        self.beta = float(beta)
        self.max_samples = int(max_samples)
        self.min_tissue = float(min_tissue)
        self.seed = int(seed)
        self.chunk_pixels = int(chunk_pixels)

    # -- to be supplied by subclasses -------------------------------------------------
    def _statistics(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        raise NotImplementedError

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def exportable(self) -> nn.Module:
        """The trace-friendly twin of this fitted normaliser, for ``stainadapt export``.

        A ``nn.Module`` mapping ``float (B, 3, H, W)`` intensities 0..255 to the
        normalised image, the same shape, rounded to integers, with no Python branch on
        the data (see :mod:`~stainadapt.normalizers.exportable`); float32 buffers.
        Normalisers without one raise :class:`~stainadapt.errors.InputError`, so export
        asks for ``--no-normalizer``.
        """
        raise not_exportable(self)

    # -- shared machinery ----------------------------------------------------------------
    def _ref_tensor(self) -> Tensor:
        for b in self.buffers():
            if b.dtype.is_floating_point:
                return b
        raise RuntimeError("normaliser has no floating-point buffer")  # pragma: no cover

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the maths runs in: the buffers' (``.double()`` switches to float64)."""
        return self._ref_tensor().dtype

    def _enough_tissue(self, tissue: Tensor) -> Tensor:
        """``(B, K)`` tissue mask -> ``(B,)`` bool: enough tissue pixels to estimate from."""
        n = tissue.sum(dim=1)
        need = max(16.0, self.min_tissue * tissue.shape[1])
        return n >= need

    def _pixel_sample(self, x: Tensor) -> PixelSample:
        """The :class:`PixelSample` of a statistics sample ``x`` ``(B, 3, K)``, all valid."""
        tissue = tissue_from_intensity(x, self.io, self.beta)
        enough = self._enough_tissue(tissue)
        return PixelSample(x, tissue, enough, None, x.shape[2], self.compute_dtype)

    def _sample(self, batch: Tensor, is_float: bool) -> Tensor:
        """Seeded pixel subsample ``(B, 3, K)``: uint8 stays uint8, floats become 0..255."""
        flat = batch.reshape(batch.shape[0], 3, -1)
        sample = sample_pixels(flat, self.max_samples, self.seed)
        return _to_intensity(sample, self.compute_dtype, True) if is_float else sample

    @torch.no_grad()
    def fit(self, reference: Any) -> StainNormalizer:
        """Estimate the reference statistics from one image; returns ``self``.

        ``reference``: uint8 tensor ``(3, H, W)`` (or ``(1, 3, H, W)``), float tensor in
        0..1, or a numpy ``(H, W, 3)`` array as :func:`stainadapt.data.io.read_image`
        returns. Raises :class:`~stainadapt.errors.InputError` when it has too little tissue.
        """
        batch, _, is_float = as_batch(reference, allow_numpy=True)
        if batch.shape[0] != 1:
            raise InputError(f"fit takes one reference image; got a batch of {batch.shape[0]}")
        batch = batch.to(self._ref_tensor().device)
        stats, valid = self._statistics(self._sample(batch, is_float))
        if not bool(valid[0]):
            raise InputError(
                "the reference image has too little tissue (or a single colour) to estimate "
                f"its stains (tissue: every channel OD >= beta={self.beta}); "
                "choose a reference tile with more stained tissue"
            )
        self._set_reference({k: v[:1] for k, v in stats.items()})
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Normalise ``(3, H, W)`` or ``(B, 3, H, W)`` images, each with its own statistics.

        Output: same dtype, shape and device as the input. Images with too little tissue
        are returned unchanged (one :class:`TissueWarning` per call says how many).
        """
        batch, squeezed, is_float = as_batch(images)
        b, _, h, w = batch.shape
        if b == 0:
            return images.clone()
        dtype = self.compute_dtype
        stats, valid = self._statistics(self._sample(batch, is_float))
        flat = batch.reshape(b, 3, h * w)
        n_bad = int((~valid).sum())
        if n_bad == b:
            out = flat.clone()
        else:
            params = self._params(stats)
            if n_bad:
                keep = valid.nonzero().squeeze(1)
                params = tuple(p.index_select(0, keep) for p in params)
                src = flat.index_select(0, keep)
            else:
                src = flat
            dst = torch.empty_like(src)
            step = max(1, self.chunk_pixels // src.shape[0])
            for s in range(0, h * w, step):
                x = src[:, :, s : s + step]
                if is_float:  # uint8 goes in as is: kernels convert on the fly
                    x = _to_intensity(x, dtype, True)
                _store(self._transform(x, params), dst[:, :, s : s + step])
            if n_bad:
                out = flat.clone()
                out[keep] = dst
            else:
                out = dst
        if n_bad:
            warnings.warn(
                f"{type(self).__name__}: {n_bad} of {b} image(s) had too little tissue "
                f"(< {self.min_tissue:.0%} of pixels with OD >= {self.beta} in every channel) "
                "or a single stain colour; passed through unchanged",
                TissueWarning,
                stacklevel=_caller_stacklevel(),
            )
        out = out.reshape(b, 3, h, w)
        return out[0] if squeezed else out

    def extra_repr(self) -> str:
        return f"io={self.io}, beta={self.beta}, max_samples={self.max_samples}"


class CoreNormalizer(StainNormalizer):
    """A normaliser whose maths is a functional core shared with its exportable twin.

    The core is a mixin listed before this class (``class Macenko(MacenkoCore,
    CoreNormalizer)``) that gives, over the options named in ``options``:

    * ``core_statistics(sample, ops)`` -> ``(stats, ok)`` from a :class:`PixelSample`;
    * ``core_params(stats, *reference)`` -> transform parameters, ``reference`` being the
      fitted buffers named in ``reference_buffers`` (their keys in ``stats`` too);
    * ``core_transform(x, params, ops)`` -> normalised intensities.

    This class runs them with :data:`~stainadapt.normalizers.ops.EAGER`; ``twin`` (a
    :class:`~stainadapt.normalizers.exportable.ExportableCore` with the same mixin) runs
    them with the trace-friendly primitives.
    """

    #: the attributes the core reads besides ``io`` (the twin copies them)
    options: ClassVar[tuple[str, ...]] = ()
    #: the fitted buffers, in the order ``core_params`` takes them
    reference_buffers: ClassVar[tuple[str, ...]] = ()
    #: the trace-friendly twin's class, built from this normaliser (None: no twin)
    twin: ClassVar[type[nn.Module] | None] = None

    def core_statistics(self, sample: PixelSample, ops: Ops) -> tuple[dict[str, Tensor], Tensor]:
        raise NotImplementedError

    def core_params(self, stats: dict[str, Tensor], *reference: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def core_transform(self, x: Tensor, params: tuple[Tensor, ...], ops: Ops) -> Tensor:
        raise NotImplementedError

    def _statistics(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self.core_statistics(self._pixel_sample(x), EAGER)

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        for name in self.reference_buffers:
            getattr(self, name).copy_(stats[name][0])

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        like = stats[self.reference_buffers[0]]
        ref = (getattr(self, n).to(like.device, like.dtype) for n in self.reference_buffers)
        return self.core_params(stats, *ref)

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        return self.core_transform(x, params, EAGER)

    def exportable(self) -> nn.Module:
        if self.twin is None:
            return super().exportable()
        return self.twin(self)
