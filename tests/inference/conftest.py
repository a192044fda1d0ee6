"""Stand-in models and synthetic images for the inference tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn


class DarkBlobNet(nn.Module):
    """A cheap, nearly translation-equivariant stand-in: logit = k * (0.55 - local mean).

    Honours the SegmentationNet interface: float (B, 3, H, W) in [0, 1] -> (B, 1, H, W)
    logits, sides multiples of ``max_stride``. Its 5x5 receptive field makes the seam
    check about the blending, not about a model that sees the whole image.
    """

    max_stride = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 5, padding=2, bias=True)
        with torch.no_grad():
            self.conv.weight.fill_(-20.0 / 75.0)
            self.conv.bias.fill_(20.0 * 0.55)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return self.conv(x)


def blob_image(h: int, w: int, seed: int = 0, n: int = 12, glass: bool = False) -> np.ndarray:
    """``(h, w, 3) uint8``: light background with dark elliptic blobs (and noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 235 if glass else 190, np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(6, max(8, h / 6)), rng.uniform(6, max(8, w / 6))
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[inside] = rng.uniform(40, 110, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def blob_net() -> DarkBlobNet:
    return DarkBlobNet().eval()


class DiscSizeNet(nn.Module):
    """Foreground = dark discs of one range of radii, exactly: a stand-in for a model that
    knows the size of a glomerulus, so tests can tell at which scale it was fed.

    A grey opening with a square of half-side ``small`` keeps discs of radius above about
    ``small * 1.4``; one with ``large`` (dilated by ``guard``, to cover the rim it leaves)
    marks the discs that are too large; a dark pixel within ``grow`` of a kept, unmarked
    disc is foreground.
    """

    max_stride = 32

    def __init__(self, small: int, large: int, guard: int, grow: int) -> None:
        super().__init__()
        self.small, self.large, self.guard, self.grow = small, large, guard, grow

    @staticmethod
    def _dilate(m: torch.Tensor, k: int) -> torch.Tensor:
        """Grey dilation by a (2k+1)^2 square, as two 1-D passes (a square is separable)."""
        m = F.max_pool2d(m, (1, 2 * k + 1), 1, (0, k))
        return F.max_pool2d(m, (2 * k + 1, 1), 1, (k, 0))

    def _open(self, m: torch.Tensor, k: int) -> torch.Tensor:
        return self._dilate(-self._dilate(-m, k), k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean(1, keepdim=True) < 0.5).float()
        too_large = self._dilate(self._open(dark, self.large), self.guard)
        keep = self._open(dark, self.small) * (1 - too_large)
        return (dark * self._dilate(keep, self.grow) * 2 - 1) * 10.0
