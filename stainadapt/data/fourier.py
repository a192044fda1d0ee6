"""Fourier-domain amplitude swap: source crops that carry the target's low frequencies.

FDA (Yang and Soatto, CVPR 2020) is an input-level adaptation baseline with nothing to
learn. The low-frequency amplitudes of an image's spectrum hold its colour, illumination
and stain density; the phase holds where the structures are. Giving every source crop the
low-frequency amplitude of a target crop, and keeping its own phase, makes source images
that look like the target stain while the source masks still fit them. G then trains on
those, with its usual loss.

``beta`` sets the swapped band as in the paper: a centred square of half-side
``floor(beta * min(H, W))`` frequencies around zero (0.01-0.09 there, on 512 px images;
0 leaves the image as it is). :func:`amplitude_swap` is the function and
:class:`AmplitudeSwap` the module, as kornia pairs them; the trainer applies it to the
source rows of every batch when ``TrainConfig.fda_beta`` is above 0 (``train --fda-beta``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["amplitude_swap", "AmplitudeSwap", "check_beta", "band_halfwidth"]


def check_beta(beta: float) -> float:
    """``beta`` as a float in ``[0, 0.5)``, or a ``ValueError`` saying why not."""
    beta = float(beta)
    if not (math.isfinite(beta) and 0.0 <= beta < 0.5):
        raise ValueError(f"fda_beta must be in [0, 0.5), got {beta}")
    return beta


def band_halfwidth(height: int, width: int, beta: float) -> int:
    """Frequencies on each side of zero whose amplitude is swapped for a ``beta``."""
    return int(math.floor(min(height, width) * check_beta(beta)))


def amplitude_swap(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """``source`` with the low-frequency amplitude of ``target``, clipped to ``[0, 1]``.

    ``source`` ``(B, C, H, W)`` and ``target`` ``(B', C, H, W)`` are float images in
    ``[0, 1]``; source row ``i`` takes the amplitude of target row ``i % B'``. Both are
    transformed in float32; the result has ``source``'s dtype. No gradient is meant to
    flow through it (it prepares inputs).
    """
    if source.ndim != 4 or target.ndim != 4:
        raise ValueError(f"amplitude_swap needs (B, C, H, W) images, got {tuple(source.shape)}"
                         f" and {tuple(target.shape)}")
    if source.shape[1:] != target.shape[1:]:
        raise ValueError(f"source {tuple(source.shape[1:])} and target "
                         f"{tuple(target.shape[1:])} crops differ in size")
    h, w = source.shape[-2:]
    b = band_halfwidth(h, w, beta)
    if b == 0 or target.shape[0] == 0:
        return source
    rows = torch.arange(source.shape[0], device=source.device) % target.shape[0]
    spectrum = torch.fft.fftshift(torch.fft.fft2(source.float()), dim=(-2, -1))
    target_amp = torch.fft.fftshift(torch.fft.fft2(target[rows].float()), dim=(-2, -1)).abs()
    amp, phase = spectrum.abs(), spectrum.angle()
    cy, cx = h // 2, w // 2
    band = (..., slice(cy - b, cy + b + 1), slice(cx - b, cx + b + 1))
    amp[band] = target_amp[band]
    swapped = torch.polar(amp, phase)
    out = torch.fft.ifft2(torch.fft.ifftshift(swapped, dim=(-2, -1))).real
    return out.clamp_(0.0, 1.0).to(source.dtype)


class AmplitudeSwap(torch.nn.Module):
    """:func:`amplitude_swap` with a fixed ``beta``: ``module(source, target)``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = check_beta(beta)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return amplitude_swap(source, target, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
