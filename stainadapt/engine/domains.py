"""The run's data: domain folders scanned and split, and each epoch's batches.

Which masks training may read is decided here, once: in uda the target's masks are
never read for training (target samples are handed to the pipeline without masks; so
too in source-only with self-training). Only ``--select target`` reads the target
*validation* masks, and the run then labels those numbers as an oracle.

The crops of an epoch and their order depend only on ``(seed, epoch, stream)``: each
epoch builds its crop datasets with an epoch-derived seed, so a resumed run sees the
same batches as an uninterrupted one.

The resolution of the tiles (:func:`tile_resolution`): a domain cut by ``stainadapt
tiles`` records its microns per pixel in ``tiles.json``; without ``mpp`` in the config
the run takes the source's, so ``model.json`` records it and ``predict`` reads slides
at it. Domains of two resolutions, or an ``mpp`` the tiles contradict, are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data.splits import domain_splits
from ..errors import InputError

__all__ = ["Domains", "load_domains", "EpochBatches", "epoch_seed", "prepare_batch",
           "tile_resolution"]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for ``(run seed, epoch, stream)``: one stream per domain, 99 for augmentation."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**31 - 1)


@dataclass
class Domains:
    """The train/validation samples of each domain and what their masks mean.

    ``tgt_labelled``: the target's training masks are used (sda). ``oracle``: the target
    validation masks are read in uda (``--select target``), so the target's validation
    numbers are reported as ``target_oracle``.
    """

    src_train: list[Any]
    src_val: list[Any]
    tgt_train: list[Any] = field(default_factory=list)
    tgt_val: list[Any] = field(default_factory=list)
    tgt_labelled: bool = False
    oracle: bool = False


def tile_resolution(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``mpp`` taken from the source's ``tiles.json`` when it has none.

    Raises :class:`InputError` (one line naming the tile record) when the source and
    target records give two resolutions, or when ``cfg.mpp`` differs from a record (by
    more than 0.1%): a model trained on tiles of one resolution and told another would
    have predict read slides at the wrong scale.
    """
    from ..data.tiles import SIDECAR, read_sidecar

    recorded: list[tuple[str, float]] = []
    source_mpp = None
    for folder in (cfg.source, cfg.target):
        data = read_sidecar(folder) if folder else None
        if data is not None and data.get("mpp") is not None:
            recorded.append((str(Path(folder) / SIDECAR), float(data["mpp"])))
            source_mpp = float(data["mpp"]) if folder is cfg.source else source_mpp
    if len(recorded) == 2 and not math.isclose(recorded[0][1], recorded[1][1], rel_tol=1e-3):
        (src, a), (tgt, b) = recorded
        raise InputError(f"{tgt}: target tiles at {b:g} um/px, source tiles ({src}) at "
                         f"{a:g}; cut both domains at one resolution (stainadapt tiles --mpp)")
    if cfg.mpp is not None:
        for where, mpp in recorded:
            if not math.isclose(cfg.mpp, mpp, rel_tol=1e-3):
                raise InputError(f"{where}: tiles at {mpp:g} um/px, not --mpp {cfg.mpp:g}; "
                                 "leave --mpp out (train takes the tiles' resolution) or "
                                 "cut the tiles again")
        return cfg
    return cfg if source_mpp is None else replace(cfg, mpp=source_mpp)


def _unmasked(sample: Any) -> Any:
    return replace(sample, mask=None)


def load_domains(cfg: TrainConfig) -> Domains:
    """Scan (and decode, so a bad file is refused before anything is written) and split.

    Raises :class:`InputError` when a split a run needs is empty.
    """
    from ..data.folders import scan_domain

    src = scan_domain(cfg.source, require_masks=True, verify=True)
    out = Domains(*domain_splits(src, cfg.val_fraction, cfg.seed, "source"))
    if cfg.target:
        need = cfg.mode == "sda"
        tgt = scan_domain(cfg.target, require_masks=need, verify=True,
                          verify_masks=need or cfg.selection == "target")
        train, val = domain_splits(tgt, cfg.val_fraction, cfg.seed, "target")
        if cfg.mode == "uda" or cfg.self_train_rounds:
            train = [_unmasked(s) for s in train]
        if cfg.mode == "uda":
            if cfg.selection == "target":
                out.oracle = True
            else:
                val = [_unmasked(s) for s in val]
        out.tgt_train, out.tgt_val = train, val
        out.tgt_labelled = cfg.mode == "sda"
    if not out.src_train:
        raise InputError(f"{cfg.source}: no training images left after the validation split")
    if cfg.mode in ("sda", "uda") and not out.tgt_train:
        raise InputError(f"{cfg.target}: no training images left after the validation split")
    if cfg.selection == "source" and not out.src_val:
        raise InputError("--select source needs a source validation split (val_fraction > 0)")
    if cfg.selection == "target" and not any(s.mask is not None for s in out.tgt_val):
        raise InputError("--select target needs a target domain with validation masks")
    return out


class EpochBatches:
    """Iterators over an epoch's batches, one crop dataset kept per stream.

    A dataset keeps its decoded images in memory, so it is built once per
    ``(stream, with_masks, tag)`` and told the epoch. ``tag`` tells apart datasets of one
    stream with other masks (a self-training round's pseudo-labels); :meth:`drop_tagged`
    forgets those when a new round starts.
    """

    def __init__(self, cfg: TrainConfig, steps: int, world: int, rank: int,
                 device: torch.device) -> None:
        self.cfg, self.steps, self.world, self.rank, self.device = cfg, steps, world, rank, device
        self._datasets: dict[tuple[int, bool, int], Any] = {}

    def drop_tagged(self) -> None:
        self._datasets = {k: v for k, v in self._datasets.items() if k[2] == 0}

    def __call__(self, samples: list[Any], with_masks: bool, epoch: int, stream: int,
                 tag: int = 0) -> Iterator:
        """Batches of ``samples`` for ``epoch``: crops and order depend on (seed, epoch)."""
        from torch.utils.data import DataLoader

        from ..data.dataset import CropDataset

        cfg = self.cfg
        key = (stream, with_masks, tag)
        ds = self._datasets.get(key)
        if ds is None:
            ds = CropDataset(samples, cfg.image_size,
                             length=self.steps * cfg.batch_size * self.world,
                             seed=cfg.seed * 10 + stream, with_masks=with_masks,
                             foreground_share=cfg.foreground_share,
                             downsample=cfg.downsample, pseudo=tag > 0)
            self._datasets[key] = ds
        ds.set_epoch(epoch)
        pin = self.device.type == "cuda"
        if self.world > 1:  # each rank a disjoint share of the epoch's crops
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(ds, num_replicas=self.world, rank=self.rank,
                                         shuffle=True, drop_last=True,
                                         seed=epoch_seed(cfg.seed, 0, stream))
            sampler.set_epoch(epoch)
            return iter(DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                                   drop_last=True, num_workers=cfg.workers, pin_memory=pin))
        order = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, stream))
        return iter(DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=order,
                               drop_last=True, num_workers=cfg.workers, pin_memory=pin))


def prepare_batch(batch: dict[str, Any], device: torch.device, normalizer: Any,
                  augment: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loader batch -> ``x (B, 3, H, W)`` float in [0, 1] and ``mask (B, 1, H, W)``.

    On the device: the normaliser (uint8 in, uint8 out), then the augmentation, which
    moves the mask with the image (stain jitter alone leaves the mask as it is). On CUDA
    ``x`` is channels_last.
    """
    from ..data.augment import StainJitter

    image = batch["image"].to(device, non_blocking=True)
    mask = batch.get("mask")
    if mask is not None:
        mask = mask.to(device, non_blocking=True).float()
    if normalizer is not None:
        image = normalizer(image)
    x = image.float() / 255.0
    if augment is not None:
        if isinstance(augment, StainJitter):
            x = augment(x)
        else:
            x, mask = augment(x, mask)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, mask
