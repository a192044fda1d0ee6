"""Random crops of a domain's images (and masks) as a torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import Sample
from .io import read_image, read_mask
from .pseudo_labels import downsample_pseudo_label, read_pseudo_label
from .resample import check_downsample, downsample_image, downsample_mask
from .sampling import crop_origin, glomerulus_centres

__all__ = ["CropDataset", "pad_to"]


def pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the first two axes (centred) up to at least ``size``."""
    h, w = arr.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return arr
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="reflect")  # numpy reflects repeatedly if needed


class CropDataset(Dataset):
    """Random ``crop_size`` crops of ``samples``.

    Item ``i`` is a crop of image ``i % len(samples)`` at a position drawn from a
    generator seeded by ``(seed, epoch, i)`` -- call :meth:`set_epoch` each epoch for new
    crops; the same seed and epoch give the same crops in any worker. Images smaller than
    the crop are reflect-padded. ``foreground_share`` of the crops (in expectation) are
    centred on a glomerulus of their image, jittered (:func:`.sampling.crop_origin`);
    the rest, and every crop of an image without glomeruli, are placed uniformly.
    ``downsample`` > 1 crops the images (and masks) that many times coarser than stored
    (:mod:`.resample`).

    Every image an item can reach (the first ``min(length, len(samples))``) is decoded
    once, here, in the process that builds the dataset, and kept in memory: DataLoader
    workers are new processes every epoch (no ``persistent_workers``, so that
    :meth:`set_epoch` reaches them), and forked workers inherit the decoded arrays
    instead of decoding them again. Memory: one uint8 ``(H, W, 3)`` array and one mask
    per image, shared copy-on-write with the workers -- what a worker-less run keeps
    after its first epoch.

    Items: ``{"image": uint8 (3, S, S), "mask": float32 (1, S, S), "name": str}``
    (``"mask"`` only when ``with_masks`` is true). With ``pseudo`` the masks are
    self-training pseudo-labels (:mod:`.pseudo_labels`): unsure pixels are negative.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        crop_size: int,
        length: int | None = None,
        seed: int = 0,
        with_masks: bool = True,
        mask_threshold: float | None = None,
        foreground_share: float = 0.0,
        downsample: float = 1.0,
        pseudo: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("CropDataset needs at least one sample")
        if with_masks and any(s.mask is None for s in samples):
            missing = next(s for s in samples if s.mask is None)
            from ..errors import InputError

            raise InputError(f"{missing.image}: no mask (needed for a labelled domain)")
        self.samples = list(samples)
        self.crop_size = int(crop_size)
        self.length = int(length) if length is not None else len(self.samples)
        self.seed = int(seed)
        self.with_masks = with_masks
        self.mask_threshold = mask_threshold
        self.pseudo = pseudo
        self.downsample = check_downsample(downsample)
        if not 0.0 <= foreground_share <= 1.0:
            raise ValueError(f"foreground_share must be in [0, 1], got {foreground_share}")
        self.foreground_share = float(foreground_share) if with_masks else 0.0
        self.epoch = 0
        used = min(self.length, len(self.samples))  # item i reads image i % len(samples)
        self._decoded = [self._decode(self.samples[k]) for k in range(used)]
        # glomerulus centres per image, for the share of crops placed on one
        self._centres = [glomerulus_centres(m > 0) if self.foreground_share > 0 else None
                         for _, m in self._decoded]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _decode(self, s: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image (H, W, 3) uint8, mask (H, W) or None)``, padded up to the crop size."""
        img = pad_to(downsample_image(read_image(s.image), self.downsample), self.crop_size)
        mask = None
        if self.with_masks and self.pseudo:
            label = read_pseudo_label(s.mask)
            mask = pad_to(downsample_pseudo_label(label, self.downsample), self.crop_size)
        elif self.with_masks:
            full = read_mask(s.mask, threshold=self.mask_threshold)
            mask = pad_to(downsample_mask(full, self.downsample), self.crop_size)
        return img, mask

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        k = i % len(self.samples)
        img, mask = self._decoded[k]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        h, w = img.shape[:2]
        c = self.crop_size
        y, x = crop_origin(rng, (h, w), c, self._centres[k], self.foreground_share)
        item = {
            "image": torch.from_numpy(
                np.ascontiguousarray(img[y : y + c, x : x + c].transpose(2, 0, 1))
            ),
            "name": self.samples[k].name,
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(
                mask[y : y + c, x : x + c].astype(np.float32)[None].copy()
            )
        return item
