"""``stainadapt.testing.make_domain``: the tiny domain folders many tests train on."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stainadapt.data.folders import scan_domain
from stainadapt.testing import make_domain


def test_make_domain(tmp_path):
    root = make_domain(tmp_path / "s", "source", n=2, size=64)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["im0.png", "im1.png"]
    assert np.asarray(Image.open(root / "masks" / "im0.png")).max() == 255
    assert len(scan_domain(root, require_masks=True, verify=True)) == 2


def test_make_domain_unlabelled_and_repeatable(tmp_path):
    a = make_domain(tmp_path / "a", "target", n=1, size=32, masks=False)
    b = make_domain(tmp_path / "b", "target", n=1, size=32, masks=False)
    assert not (a / "masks").exists()
    assert (a / "images" / "im0.png").read_bytes() == (b / "images" / "im0.png").read_bytes()
