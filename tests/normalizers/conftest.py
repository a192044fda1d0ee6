"""Shared images for the normaliser tests (all bundled, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def ihc() -> np.ndarray:
    """scikit-image's immunohistochemistry image, (512, 512, 3) uint8 (ships with skimage)."""
    data = pytest.importorskip("skimage.data")
    return data.immunohistochemistry()


@pytest.fixture(scope="session")
def ihc_t(ihc) -> torch.Tensor:
    return torch.from_numpy(ihc).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="session")
def ref_t(ihc_t) -> torch.Tensor:
    """A different reference: the same slide turned by 90 degrees, its lower half."""
    return torch.rot90(ihc_t, 1, dims=(1, 2))[:, 256:, :].contiguous()
