"""Reinhard colour transfer (Reinhard et al. 2001) in CIE LAB via ``kornia.color``.

Each image's per-channel LAB mean and standard deviation are matched to the
reference's: ``lab' = (lab - mean) / std * ref_std + ref_mean``. By default the
statistics come from every (sampled) pixel, as in the original method; with
``tissue_only=True`` only tissue pixels (every OD >= beta) count, which keeps
background-heavy tiles from being judged by their white glass. Tiles with too little
tissue, or a single colour (a channel with std < 1e-3), pass through unchanged.

The maths is written once (:func:`reinhard_statistics`, :func:`reinhard_params`,
:func:`reinhard_transform`): kornia's LAB conversions are trace-friendly as they are, so
the eager :class:`Reinhard` and its twin :class:`ExportableReinhard` differ only in the
sample they pass (the twin's is padded, with a validity mask).
"""

from __future__ import annotations

import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import Tensor

from ..errors import InputError
from .base import CoreNormalizer
from .exportable import ExportableCore
from .ops import Ops, PixelSample

__all__ = [
    "ExportableReinhard",
    "Reinhard",
    "ReinhardCore",
    "reinhard_params",
    "reinhard_statistics",
    "reinhard_transform",
]


def _lab(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Intensities ``(B, 3, S)`` in 0..255 -> LAB ``(B, 3, S)`` in ``dtype``."""
    return rgb_to_lab((x.to(dtype) / 255.0).unsqueeze(-1)).squeeze(-1)


def reinhard_statistics(
    sample: PixelSample, tissue_only: bool = False
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image LAB mean and (population) std ``(B, 3)`` over the valid sampled pixels,
    or the tissue ones with ``tissue_only``; ``ok`` ``(B,)`` also False for a channel with
    std < 1e-3 (a single colour), where std is set to 1."""
    lab = _lab(sample.x, sample.dtype)
    if tissue_only:
        w = sample.tissue.to(lab.dtype)
    elif sample.valid is None:
        w = torch.ones_like(lab[:, 0])
    else:
        w = sample.valid[None].expand_as(sample.tissue).to(lab.dtype)
    n = w.sum(dim=1).clamp(min=1)[:, None]
    mean = (lab * w[:, None]).sum(dim=2) / n
    var = (((lab - mean[:, :, None]) ** 2) * w[:, None]).sum(dim=2) / n
    std = var.sqrt()
    ok = sample.enough & (std >= 1e-3).all(dim=1)
    std = torch.where(ok[:, None], std, torch.ones_like(std))
    return {"lab_mean": mean, "lab_std": std}, ok


def reinhard_params(
    stats: dict[str, Tensor], ref_mean: Tensor, ref_std: Tensor
) -> tuple[Tensor, Tensor]:
    """``(scale, shift)``, each ``(B, 3, 1)``: ``lab' = lab * scale + shift`` maps the
    image's statistics onto the reference's ``(3,)`` (in the statistics' dtype)."""
    mean = stats["lab_mean"]
    scale = ref_std / stats["lab_std"]  # (B, 3)
    shift = ref_mean - mean * scale
    return scale[:, :, None], shift[:, :, None]


def reinhard_transform(x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
    """Intensities ``(B, 3, S)`` (0..255) -> normalised intensities ``(B, 3, S)`` (float)."""
    scale, shift = params
    lab = torch.addcmul(shift, _lab(x, scale.dtype), scale)
    return lab_to_rgb(lab.unsqueeze(-1), clip=True).squeeze(-1).mul_(255.0)


class ReinhardCore:
    """Reinhard's functional core over its options, for :class:`Reinhard` and its twin."""

    tissue_only: bool
    options = ("tissue_only",)
    reference_buffers = ("lab_mean", "lab_std")

    def core_statistics(self, sample: PixelSample, ops: Ops) -> tuple[dict[str, Tensor], Tensor]:
        return reinhard_statistics(sample, self.tissue_only)

    def core_params(self, stats: dict[str, Tensor], *reference: Tensor) -> tuple[Tensor, ...]:
        return reinhard_params(stats, *reference)

    def core_transform(self, x: Tensor, params: tuple[Tensor, ...], ops: Ops) -> Tensor:
        return reinhard_transform(x, params)


class ExportableReinhard(ReinhardCore, ExportableCore):
    """:class:`Reinhard`'s trace-friendly twin (see :mod:`~stainadapt.normalizers.exportable`)."""


class Reinhard(ReinhardCore, CoreNormalizer):
    """Reinhard normaliser; an ``nn.Module``.

    Args:
        tissue_only: statistics over tissue pixels only (default: every pixel).
        io, beta, max_samples, min_tissue, seed, chunk_pixels: see
            :class:`~stainadapt.normalizers.base.StainNormalizer` (``io`` and ``beta``
            only define which pixels are tissue).

    Buffers: ``lab_mean`` ``(3,)``, ``lab_std`` ``(3,)`` and ``fitted``. ``stain_matrix``
    and ``max_concentrations`` are None: Reinhard is not stain-vector based.
    """

    stain_matrix = None
    max_concentrations = None
    twin = ExportableReinhard

    def __init__(
        self,
        tissue_only: bool = False,
        io: float = 240.0,
        beta: float = 0.15,
        max_samples: int = 2**14,
        min_tissue: float = 0.01,
        seed: int = 0,
        chunk_pixels: int = 2**20,
    ) -> None:
        super().__init__(io, beta, max_samples, min_tissue, seed, chunk_pixels)
        self.tissue_only = bool(tissue_only)
        self.register_buffer("lab_mean", torch.zeros(3))
        self.register_buffer("lab_std", torch.ones(3))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        super()._set_reference(stats)
        self.fitted.fill_(True)

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        if not bool(self.fitted):
            raise InputError("Reinhard normaliser is not fitted: call fit(reference) first")
        return super()._params(stats)
