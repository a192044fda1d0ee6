"""Reinhard colour transfer (Reinhard et al. 2001) in CIE LAB via ``kornia.color``.

Each image's per-channel LAB mean and standard deviation are matched to the
reference's: ``lab' = (lab - mean) / std * ref_std + ref_mean``. By default the
statistics come from every (sampled) pixel, as in the original method; with
``tissue_only=True`` only tissue pixels (every OD >= beta) count, which keeps
background-heavy tiles from being judged by their white glass. Tiles with too little
tissue, or a single colour (a channel with std < 1e-3), pass through unchanged.
"""

from __future__ import annotations

import torch
from kornia.color import lab_to_rgb, rgb_to_lab
from torch import Tensor

from ..errors import InputError
from .base import StainNormalizer
from .od import tissue_from_intensity

__all__ = ["Reinhard"]


def _lab(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Intensities ``(B, 3, S)`` in 0..255 -> LAB ``(B, 3, S)`` in ``dtype``."""
    return rgb_to_lab((x.to(dtype) / 255.0).unsqueeze(-1)).squeeze(-1)


class Reinhard(StainNormalizer):
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

    def _statistics(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        tissue = tissue_from_intensity(x, self.io, self.beta)
        ok = self._enough_tissue(tissue)
        lab = _lab(x, self.compute_dtype)
        w = tissue.to(lab.dtype) if self.tissue_only else torch.ones_like(lab[:, 0])
        n = w.sum(dim=1).clamp(min=1)[:, None]
        mean = (lab * w[:, None]).sum(dim=2) / n
        var = (((lab - mean[:, :, None]) ** 2) * w[:, None]).sum(dim=2) / n
        std = var.sqrt()
        ok = ok & (std >= 1e-3).all(dim=1)
        std = torch.where(ok[:, None], std, torch.ones_like(std))
        return {"lab_mean": mean, "lab_std": std}, ok

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        self.lab_mean.copy_(stats["lab_mean"][0])
        self.lab_std.copy_(stats["lab_std"][0])
        self.fitted.fill_(True)

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        if not bool(self.fitted):
            raise InputError("Reinhard normaliser is not fitted: call fit(reference) first")
        mean = stats["lab_mean"]
        scale = self.lab_std.to(mean) / stats["lab_std"]  # (B, 3)
        shift = self.lab_mean.to(mean) - mean * scale
        return scale[:, :, None], shift[:, :, None]

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        scale, shift = params
        lab = torch.addcmul(shift, _lab(x, scale.dtype), scale)
        return lab_to_rgb(lab.unsqueeze(-1), clip=True).squeeze(-1).mul_(255.0)
