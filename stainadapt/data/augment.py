"""Batch augmentation on the training device (kornia), and Tellez-style stain jitter.

:class:`Augment` applies flips, 90-degree rotations and a small affine transform to the
image *and* the mask with the same parameters (masks are resampled with nearest
neighbour, so they stay binary), then brightness/contrast to the image only. Optional
stain jitter (:class:`StainJitter`) runs first, on the image only.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

__all__ = ["Augment", "StainJitter", "HED_MATRIX", "acquisition_jitter", "PROFILES",
           "augment_profile"]

# Ruifrok & Johnston (2001) haematoxylin, eosin and DAB optical-density vectors (rows),
# the basis used for colour deconvolution by scikit-image's ``rgb2hed``.
HED_MATRIX = (
    (0.650, 0.704, 0.286),
    (0.072, 0.990, 0.105),
    (0.268, 0.570, 0.776),
)
_EPS = 1.0 / 255.0


class StainJitter(nn.Module):
    """Random stain augmentation in optical-density space (Tellez et al. 2019).

    Each image is deconvolved into stain concentrations ``c`` over a stain basis
    (default: Ruifrok's H, E, DAB); every concentration channel is perturbed as
    ``c * alpha + beta`` with ``alpha ~ U(1 - s, 1 + s)`` and ``beta ~ U(-s, s)``
    (``s = strength``, the paper's "HED light" is about 0.05, "strong" 0.2), the stain
    vectors themselves are jittered by ``N(0, s / 4)`` and renormalised, and the image
    is recomposed with the Beer-Lambert law. Input/output: float ``(B, 3, H, W)`` in
    ``[0, 1]``. ``strength=0`` is the identity.
    """

    def __init__(self, strength: float = 0.05, matrix=HED_MATRIX) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError("stain jitter strength must be >= 0")
        self.strength = float(strength)
        m = torch.tensor(matrix, dtype=torch.float32)
        m = m / m.norm(dim=1, keepdim=True)
        self.register_buffer("matrix", m, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.strength == 0 or not self.training:
            return image
        b = image.shape[0]
        s = self.strength
        dtype = image.dtype
        x = image.float().clamp(_EPS, 1.0)
        od = -torch.log10(x)  # (B, 3, H, W)
        m = self.matrix.to(x.device)
        conc = torch.einsum("bchw,cs->bshw", od, torch.linalg.inv(m))
        gen = dict(device=x.device, dtype=torch.float32)
        alpha = 1 + (torch.rand(b, 3, 1, 1, **gen) * 2 - 1) * s
        beta = (torch.rand(b, 3, 1, 1, **gen) * 2 - 1) * s
        conc = conc * alpha + beta
        mj = m.unsqueeze(0) + torch.randn(b, 3, 3, **gen) * (s / 4)
        mj = (mj.abs() / mj.abs().norm(dim=2, keepdim=True)).clamp_min(1e-6)
        od = torch.einsum("bshw,bsc->bchw", conc, mj)
        return torch.pow(10.0, -od).clamp(0, 1).to(dtype)


def acquisition_jitter(strength: float = 1.0) -> list[nn.Module]:
    """Scanner and optics variation: lower contrast, optical blur, sensor noise.

    Two stains are also two acquisitions: on the synthetic data Masson is rendered with a
    quarter less contrast, twice the blur and three times the noise of PASM (real slides
    differ the same way between labs and scanners). A G trained without these cues
    varying treats them as evidence; the domain discriminators then tell S from T by them
    alone (accuracy 0.95-1.0, benchmarks/RESULTS.md "Acquisition jitter") and their
    gradient says nothing about the stain. nnU-Net's default pipeline randomises the same
    three things. ``strength`` 1 (per image): contrast x U(0.7, 1) with p 0.3, Gaussian
    blur sigma U(0.1, 1.0) px with p 0.5, additive Gaussian noise std 0.02 (about 5 grey
    levels) with p 0.5; the ranges scale with ``strength``.
    """
    import kornia.augmentation as K

    s = float(strength)
    if s < 0:
        raise ValueError("acquisition jitter strength must be >= 0")
    sigma = max(0.1, s)
    kernel = 2 * math.ceil(2.5 * sigma) + 1  # +-2.5 sigma: the Gaussian's mass
    return [
        K.RandomContrast(contrast=(max(0.0, 1 - 0.3 * s), 1.0), p=0.3),
        K.RandomGaussianBlur(kernel_size=(kernel, kernel), sigma=(0.1, sigma), p=0.5),
        K.RandomGaussianNoise(mean=0.0, std=0.02 * s, p=0.5),
    ]


class Augment(nn.Module):
    """Geometric (image + mask) and photometric (image) augmentation for a batch.

    ``forward(image float (B,3,H,W) in [0,1], mask (B,1,H,W) or None) -> (image, mask)``
    on whatever device the batch is on. In ``eval()`` mode it is the identity.
    """

    def __init__(
        self,
        flips: bool = True,
        rot90: bool = True,
        affine: bool = True,
        degrees: float = 15.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.05,
        brightness: float = 0.1,
        contrast: float = 0.1,
        stain_jitter: float = 0.0,
        acquisition: float = 0.0,
        affine_p: float = 0.5,
        elastic_p: float = 0.0,
        gamma: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        geo = []
        if flips:
            geo += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
        if rot90:
            geo.append(K.RandomRotation90(times=(0, 3), p=1.0))
        if affine:
            geo.append(
                K.RandomAffine(
                    degrees=degrees,
                    translate=(translate, translate),
                    scale=scale,
                    padding_mode="reflection",
                    p=affine_p,
                )
            )
        if elastic_p > 0:  # smooth local warps: glomeruli are not rigid discs
            geo.append(K.RandomElasticTransform(kernel_size=(63, 63), sigma=(16.0, 16.0),
                                                alpha=(1.0, 1.0), align_corners=True,
                                                padding_mode="reflection",
                                                p=elastic_p))
        self.geometric = (
            K.AugmentationSequential(*geo, data_keys=["input", "mask"]) if geo else None
        )
        photo = []
        if brightness > 0:
            photo.append(K.RandomBrightness(brightness=(1 - brightness, 1 + brightness), p=0.8))
        if contrast > 0:
            photo.append(K.RandomContrast(contrast=(1 - contrast, 1 + contrast), p=0.8))
        if gamma is not None:
            photo.append(K.RandomGamma(gamma=gamma, p=0.5))
        if acquisition:  # the function refuses a negative strength
            photo += acquisition_jitter(acquisition)
        self.photometric = nn.Sequential(*photo)
        self.stain = StainJitter(stain_jitter) if stain_jitter > 0 else None

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.training:
            return image, mask
        if self.stain is not None:
            image = self.stain(image)
        if self.geometric is not None:
            with warnings.catch_warnings():  # kornia's elastic mask path leaves it unset
                warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid")
                if mask is not None:
                    image, mask = self.geometric(image, mask.to(image.dtype))
                else:
                    image = self.geometric(image, torch.zeros_like(image[:, :1]))[0]
        image = self.photometric(image).clamp(0, 1)
        return image, mask


#: Geometric and photometric settings of :class:`Augment` by profile name. ``light`` is
#: the class's defaults; ``strong`` is nnU-Net's kind of small-data augmentation: any
#: rotation, scale 0.7-1.4 (glomeruli differ in size between biopsies and scanners),
#: elastic warps, gamma and wider brightness/contrast.
PROFILES: dict[str, dict] = {
    "light": {},
    "strong": dict(degrees=180.0, scale=(0.7, 1.4), translate=0.1, affine_p=0.8,
                   elastic_p=0.2, gamma=(0.7, 1.5), brightness=0.15, contrast=0.15),
}


def augment_profile(profile: str = "light", stain_jitter: float = 0.0,
                    acquisition: float = 0.0) -> Augment:
    """The :class:`Augment` of a named profile (``light`` or ``strong``)."""
    if profile not in PROFILES:
        raise ValueError(f"augment profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return Augment(stain_jitter=stain_jitter, acquisition=acquisition, **PROFILES[profile])
