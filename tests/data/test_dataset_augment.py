"""Random crops with reflect padding, and augmentation that keeps masks aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainadapt.data.augment import Augment, StainJitter
from stainadapt.data.dataset import CropDataset, pad_to
from stainadapt.data.folders import Sample, scan_domain
from stainadapt.data.io import write_image
from stainadapt.errors import InputError


def _domain(tmp_path, sizes=((80, 96), (40, 30))):
    for i, (h, w) in enumerate(sizes):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = np.arange(w, dtype=np.uint8)[None] * 2
        img[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 3
        mask = img[..., 0] > 60  # derived from the image: alignment is checkable
        write_image(tmp_path / "d" / "images" / f"s{i}.png", img)
        write_image(tmp_path / "d" / "masks" / f"s{i}.png", mask)
    return scan_domain(tmp_path / "d", require_masks=True)


def test_crops_shapes_alignment_and_seed(tmp_path):
    samples = _domain(tmp_path)
    ds = CropDataset(samples, crop_size=64, length=6, seed=1)
    assert len(ds) == 6
    for i in range(6):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
        assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.float32
        assert torch.equal(item["mask"][0] > 0, item["image"][0] > 60)
        assert item["name"] == f"s{i % 2}"
    again = CropDataset(samples, crop_size=64, length=6, seed=1)
    assert torch.equal(ds[2]["image"], again[2]["image"])
    crops = {CropDataset(samples, 32, length=1, seed=s)[0]["image"].sum().item() for s in range(6)}
    assert len(crops) > 1  # seeds move the crop
    ds.set_epoch(1)
    assert ds[0]["image"].shape == (3, 64, 64)
    with pytest.raises(IndexError):
        ds[6]


def test_small_image_reflect_padded(tmp_path):
    samples = _domain(tmp_path, sizes=((40, 30),))
    item = CropDataset(samples, crop_size=64)[0]
    img = item["image"].numpy()
    # centred reflect padding: column 17+k mirrors column 17-k around the left edge
    assert np.array_equal(img[:, :, 17 - 1], img[:, :, 17 + 1])
    a = np.arange(5)
    assert pad_to(a[None].repeat(5, 0), 9)[2].tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]


def test_unlabelled_and_missing_masks(tmp_path):
    samples = [Sample(s.name, s.image, None) for s in _domain(tmp_path)]
    item = CropDataset(samples, 32, with_masks=False)[0]
    assert "mask" not in item
    with pytest.raises(InputError, match="no mask"):
        CropDataset(samples, 32, with_masks=True)


def test_augment_keeps_mask_aligned(device):
    torch.manual_seed(0)
    img = torch.zeros(8, 3, 64, 64, device=device)
    img[:, :, 8:30, 5:45] = 1.0
    img[:, :, 40:60, 30:38] = 1.0
    mask = img[:, :1].clone()
    aug = Augment(brightness=0, contrast=0).train()
    out, m = aug(img, mask)
    assert out.device == img.device and m.shape == mask.shape
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    mismatch = ((out[:, :1] > 0.5).float() != m).float().mean().item()
    assert mismatch < 0.01
    assert not torch.equal(out, img)  # something happened
    out2, none = aug(img)
    assert none is None and out2.shape == img.shape
    ev, em = aug.eval()(img, mask)
    assert ev is img and em is mask


def test_photometric_image_only(device):
    img = torch.full((4, 3, 32, 32), 0.5, device=device)
    mask = torch.ones(4, 1, 32, 32, device=device)
    out, m = Augment(flips=False, rot90=False, affine=False, brightness=0.3, contrast=0.3)(
        img, mask
    )
    assert torch.equal(m, mask) and out.min() >= 0 and out.max() <= 1


def test_stain_jitter(device):
    torch.manual_seed(0)
    img = torch.rand(4, 3, 32, 32, device=device) * 0.8 + 0.1
    assert torch.equal(StainJitter(0.0)(img), img)
    out = StainJitter(0.1).train()(img)
    assert out.shape == img.shape and 0 < (out - img).abs().mean() < 0.2
    small = StainJitter(1e-6).train()(img)
    assert (small - img).abs().max() < 1e-3  # deconvolve + recompose is the identity
    assert torch.equal(StainJitter(0.1).eval()(img), img)
    with pytest.raises(ValueError):
        StainJitter(-1)


def test_acquisition_jitter_blurs_and_adds_noise_to_the_image_only(device):
    torch.manual_seed(0)
    img = torch.full((32, 3, 32, 32), 0.2, device=device)
    img[..., 8:24, 8:24] = 0.8  # a sharp square: blur leaves values between 0.2 and 0.8
    mask = (img[:, :1] > 0.5).float()
    plain = dict(flips=False, rot90=False, affine=False, brightness=0, contrast=0)
    same, _ = Augment(**plain).train()(img, mask)
    assert torch.equal(same, img)  # acquisition=0 (the class default): nothing added
    out, m = Augment(**plain, acquisition=1.0).train()(img, mask)
    assert torch.equal(m, mask) and out.min() >= 0 and out.max() <= 1
    changed = (out - img).abs().flatten(1).amax(1) > 1e-3
    assert 0 < int(changed.sum()) < 32  # per image, each part with its probability
    edge = out[:, :, 16, 6:10]  # across the square's left edge
    assert ((edge > 0.3) & (edge < 0.7)).any()  # blurred or dimmed somewhere
    with pytest.raises(ValueError, match=">= 0"):
        Augment(acquisition=-1.0)
