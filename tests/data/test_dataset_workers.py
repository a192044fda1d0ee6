"""Decoded images outlive DataLoader workers: a new loader per epoch decodes nothing again.

The trainer builds a new DataLoader every epoch (so that ``set_epoch`` reaches the
workers), and its worker processes start fresh each time. The dataset decodes every image
once in the building process; workers inherit the arrays, and the crops are the same with
and without workers.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

import stainadapt.data.dataset as dataset_module
from stainadapt.data.dataset import CropDataset
from stainadapt.data.folders import scan_domain
from stainadapt.testing import make_domain


def _epoch(ds: CropDataset, epoch: int, workers: int) -> list[dict]:
    """One epoch's batches, loaded the way the trainer loads them (new loader, seeded order)."""
    ds.set_epoch(epoch)
    order = torch.Generator().manual_seed(100 + epoch)
    loader = DataLoader(ds, batch_size=2, shuffle=True, generator=order, drop_last=True,
                        num_workers=workers)
    return list(loader)


@pytest.fixture
def decodes(tmp_path, monkeypatch):
    """A file that gets one ``pid path`` line per image decode, from whichever process."""
    log = tmp_path / "decoded.txt"
    log.touch()
    real = dataset_module.read_image

    def counting(path, *args, **kwargs):
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {path}\n")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "read_image", counting)
    return log


def test_workers_decode_nothing_and_crop_the_same(tmp_path, decodes):
    samples = scan_domain(make_domain(tmp_path / "s", "source", n=3, size=80), True)
    ds = CropDataset(samples, crop_size=64, length=8, seed=3)
    with_workers = [_epoch(ds, epoch, workers=2) for epoch in (0, 1)]
    lines = decodes.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(samples), lines  # each image once, in this process
    assert {line.split()[0] for line in lines} == {str(os.getpid())}

    plain = CropDataset(samples, crop_size=64, length=8, seed=3)
    for epoch, batches in zip((0, 1), with_workers, strict=True):
        expected = _epoch(plain, epoch, workers=0)
        assert len(batches) == len(expected) == 4
        for a, b in zip(batches, expected, strict=True):
            assert a["name"] == b["name"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(with_workers[0][0]["image"], with_workers[1][0]["image"])


def test_only_reachable_images_are_decoded(tmp_path, decodes):
    samples = scan_domain(make_domain(tmp_path / "s", "source", n=4, size=64), True)
    ds = CropDataset(samples, crop_size=64, length=2)  # items 0, 1: images 0, 1 only
    assert [ds[i]["name"] for i in range(2)] == ["im0", "im1"]
    decoded = [line.split()[1] for line in decodes.read_text(encoding="utf-8").splitlines()]
    assert decoded == [str(samples[0].image), str(samples[1].image)]
