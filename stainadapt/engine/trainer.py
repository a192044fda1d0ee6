"""The training engine: source-only, supervised DA (sda) and unsupervised DA (uda).

Schedule (paper section 2.2, see :mod:`.schedule`): ``seg`` epochs train G alone on
L_seg; ``disc`` epochs train the discriminators alone with G frozen (eval mode, no grad);
``adv`` epochs alternate one G step on L_full and one step of every discriminator.

One step of the adversarial phase:

1. G runs on the batch ``[x_S; x_T]`` and returns logits and the feature maps f0..f9.
   With ``domain_batchnorm`` (the default) the S and T halves are separate BatchNorm
   batches (``SegmentationNet.forward(split=...)``): a mixed batch is normalised with
   statistics that fit neither stain, and with label flipping that let G escape the
   discriminators by calling every target pixel foreground (benchmarks/RESULTS.md).
2. **G update** on ``L_full = L_seg - alpha * L_D``, realised as label flipping
   ``+ alpha * BCE(D(.), flipped label)`` (``adv_loss = "flip"``, the default) or
   literally as ``- alpha * BCE(D(.), true label)`` (``"minimax"``); see :mod:`.losses`
   for why the default. The discriminators' parameters have ``requires_grad`` off during this
   backward pass.
3. **D update**: every discriminator sees G's features *detached* -- source = 1,
   target = 0 -- or, for the shape discriminator, ground-truth masks = 1 (S masks; in sda
   S and T masks) and G's detached probabilities (S and T) = 0. Each discriminator has
   its own Adam over its own parameters (lr ``disc_lr``).

Self-training (``self_train_rounds``, after the schedule; not in the paper): at the start
of each round G's model (the moving average if ``ema``) labels the target training split,
p > threshold, into ``RUN/pseudo/round-R/``; G restarts from that model with a fresh Adam
(and a fresh average), then trains on L_seg over S labels and those pseudo-labels. This
is what lifted Masson Dice on every seed in benchmarks/RESULTS.md, where the adversarial
term alone did not. A resumed run reads the round's labels back from the folder.

In uda the target's masks are never read for training: target samples are handed to the
data pipeline without masks (so too in source-only with self-training). Only
``--select target`` reads the target *validation* masks, and the output labels those
numbers as an oracle.

Determinism and resuming: the crops of an epoch, the augmentation and every other random
draw depend only on ``(seed, epoch)`` (each epoch reseeds the RNGs and builds its crop
datasets with an epoch-derived seed), so a run resumed from ``state.pt`` ends, on CPU,
with the same weights as an uninterrupted one. ``state.pt`` is written atomically at
every epoch boundary; Ctrl-C or SIGTERM stops at once and leaves the last boundary's
state to ``--resume`` from.

Several processes (``torchrun``, see :mod:`.distributed`): G and every discriminator are
wrapped in DistributedDataParallel, each network in a wrapper of its own so that the G
step averages G's gradients only and each D step its discriminator's only (the
discriminators are called unwrapped, with ``requires_grad`` off, inside the G step).
Each rank draws a different share of the epoch's crops (DistributedSampler, epoch set);
``--batch-size`` is per rank. Rank 0 alone writes the run folder and validates; the
validation result is broadcast so every rank takes the same selection decisions, and
losses are averaged over ranks. State is saved from the unwrapped modules, so a run
resumes with any number of ranks.

GPU path: data and augmentation on the device, bf16 autocast (no loss scaling: bf16 has
fp32's range, and several optimisers share no scaler), channels_last, and no host sync
inside a step: losses and accuracies accumulate in device tensors read once per epoch,
and a non-finite loss skips its optimiser step through the fused Adam's ``found_inf``
input (the step counter is not advanced either) and is counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..atomic import atomic_write_text
from ..config import TrainConfig, dumps_toml, load_toml
from ..data.splits import split_samples
from ..device import resolve_device as _resolve_device
from ..errors import InputError, ReportedInterrupt, RunFailure
from ..runs import non_finite, normalizer_to_meta, save_model
from ..schedule import PHASES, epoch_phases, self_train_round
from .losses import generator_adv_term, seg_loss
from .report import write_curves, write_overlay
from .state import STATE_FILE, load_state, rng_state, save_state, set_rng_state

__all__ = [
    "Trainer",
    "TrainResult",
    "train",
    "resume",
    "split_samples",
    "evaluate_model",
    "resolve_device",
    "load_domain_images",
]

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
logger = logging.getLogger(__name__)
# Fields that define the networks: a resumed run may not change them.
FROZEN_ON_RESUME = ("mode", "discs", "backbone", "image_size", "source", "target", "normalize")


# --------------------------------------------------------------------------- helpers


def resolve_device(spec: str) -> torch.device:
    """The shared ``--device`` rule; training runs on CPU or CUDA only."""
    device = _resolve_device(spec)
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None  # auto


def _epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**31 - 1)


def _seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def load_domain_images(samples: list[Any], with_masks: bool) -> list[tuple[str, np.ndarray, Any]]:
    """Read ``(name, image uint8 HxWx3, mask bool HxW or None)`` for evaluation."""
    from ..data.io import read_image, read_mask

    out = []
    for s in samples:
        mask = read_mask(s.mask) if (with_masks and s.mask is not None) else None
        out.append((s.name, read_image(s.image), mask))
    return out


def _dice_acc(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Dice and pixel accuracy of two boolean maps (Dice = 1 when both are empty)."""
    try:
        from ..metrics import dice as _dice  # type: ignore[attr-defined]
        from ..metrics import pixel_accuracy as _acc  # type: ignore[attr-defined]

        return float(_dice(pred, truth)), float(_acc(pred, truth))
    except (ImportError, TypeError, AttributeError):
        pass
    pred, truth = pred.bool(), truth.bool()
    inter = (pred & truth).sum().item()
    total = pred.sum().item() + truth.sum().item()
    dice = 1.0 if total == 0 else 2.0 * inter / total
    acc = (pred == truth).float().mean().item()
    return dice, acc


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Probabilities ``(H, W)`` for one whole image (reflect-padded to a multiple of 32)."""
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).to(device)
    if normalizer is not None:
        x = normalizer(x)
    x = x.float() / 255.0
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(x)
    return torch.sigmoid(logits.float())[0, 0, :h, :w]


def evaluate_model(
    model: torch.nn.Module,
    items: list[tuple[str, np.ndarray, Any]],
    device: torch.device,
    threshold: float = 0.5,
    normalizer: Any = None,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean (and std) Dice and pixel accuracy of ``model`` over labelled images."""
    was_training = model.training
    model.eval()
    dices, accs = [], []
    for _, image, mask in items:
        if mask is None:
            continue
        prob = predict_probs(model, image, device, normalizer, amp)
        d, a = _dice_acc(prob > threshold, torch.from_numpy(mask).to(prob.device))
        dices.append(d)
        accs.append(a)
    model.train(was_training)
    if not dices:
        return {}
    return {
        "dice": float(np.mean(dices)),
        "dice_std": float(np.std(dices)),
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "n": len(dices),
    }


def _make_adam(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float],
               device: torch.device) -> tuple[torch.optim.Adam, bool]:
    """Fused Adam when the device supports it (skip-on-non-finite without a host sync)."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True), True
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas), False


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int | None
    best: dict[str, Any] | None
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0
    interrupted: bool = False


# --------------------------------------------------------------------------- trainer


class Trainer:
    """One training run. ``Trainer(config).fit()`` trains and writes the run folder."""

    def __init__(self, config: TrainConfig, console: Any = None, progress: bool = False,
                 resume_state: dict[str, Any] | None = None) -> None:
        from ..data.folders import scan_domain
        from ..models.unet import SegmentationNet
        from ..registry import create

        self.cfg = config.validate()
        self.world = distributed.world_size()
        self.rank = distributed.rank() if self.world > 1 else 0
        self.main = self.rank == 0  # only rank 0 writes, prints and shows progress
        self.console = console if self.main else None
        self.show_progress = progress and self.main
        self.run_dir = Path(config.out)
        self.device = distributed.local_device(resolve_device(config.device))
        self.amp = _amp_dtype(config.amp, self.device)
        self.channels_last = self.device.type == "cuda"
        self.phases = epoch_phases(config)
        cfg = config

        # ---- data (target masks: never in uda training; val only for --select target)
        # verify: decode every file now, so a bad one is refused before anything is written
        src = scan_domain(cfg.source, require_masks=True, verify=True)
        self.src_train, self.src_val = split_samples(src, cfg.val_fraction, cfg.seed)
        self.tgt_train: list[Any] = []
        self.tgt_val: list[Any] = []
        self.tgt_labelled = False
        self.oracle = False
        if cfg.target:
            need = cfg.mode == "sda"
            tgt = scan_domain(cfg.target, require_masks=need, verify=True,
                              verify_masks=need or cfg.selection == "target")
            train, val = split_samples(tgt, cfg.val_fraction, cfg.seed + 1)
            if cfg.mode == "uda" or cfg.self_train_rounds:
                train = [_unmasked(s) for s in train]
            if cfg.mode == "uda":
                if cfg.selection == "target":
                    self.oracle = True
                else:
                    val = [_unmasked(s) for s in val]
            self.tgt_train, self.tgt_val = train, val
            self.tgt_labelled = cfg.mode == "sda"
        if not self.src_train:
            raise InputError(f"{cfg.source}: no training images left after the validation split")
        if cfg.mode in ("sda", "uda") and not self.tgt_train:
            raise InputError(f"{cfg.target}: no training images left after the validation split")
        if cfg.selection == "source" and not self.src_val:
            raise InputError("--select source needs a source validation split (val_fraction > 0)")
        if cfg.selection == "target" and not any(s.mask is not None for s in self.tgt_val):
            raise InputError("--select target needs a target domain with validation masks")
        # One step consumes batch_size crops per domain on every rank.
        self.steps = cfg.steps_per_epoch or max(
            1, len(self.src_train) // (cfg.batch_size * self.world))

        # ---- networks (seeded so two runs with the same seed start identically)
        _seed_everything(cfg.seed)
        self.model = SegmentationNet(backbone=cfg.backbone, pretrained=cfg.pretrained)
        if cfg.init and resume_state is None:
            _init_from_run(self.model, cfg.init, cfg.backbone)
        self.discs: list[Any] = []
        for spec in cfg.discs:
            disc = create("discriminators", spec, self.model.feature_table)
            self.discs.append(disc)
        self.disc_names = _unique_names(cfg.discs)
        if cfg.mode == "uda" and self.oracle is False and cfg.selection == "target":
            raise AssertionError("unreachable")  # pragma: no cover
        self.normalizer = None
        if cfg.normalize:
            from ..data.io import read_image

            norm = create("normalizers", cfg.normalize)
            norm.fit(read_image(cfg.reference))
            self.normalizer = norm.to(self.device) if hasattr(norm, "to") else norm

        self.model.to(self.device)
        for d in self.discs:
            d.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            for d in self.discs:
                d.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.world > 1:
            self._convert_sync_bn()
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g, self.fused = _make_adam(list(self.model.parameters()), cfg.lr, betas,
                                            self.device)
        self.opt_d = [_make_adam(list(d.parameters()), cfg.disc_lr, betas, self.device)[0]
                      for d in self.discs]
        self.augment = self._build_augment()
        # A moving average of G (timm's ModelEmaV3: weights and BatchNorm statistics).
        # Short adversarial runs swing from epoch to epoch (target Dice 0.0-0.35 between
        # neighbouring epochs on the synthetic demo); the average is what gets validated,
        # selected and saved, so one lucky or unlucky snapshot does not decide a run.
        self.ema: Any = self._fresh_ema()

        # ---- bookkeeping
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_record: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self._val_cache: dict[str, list] = {}
        self._datasets: dict[tuple[int, bool, int], Any] = {}
        # self-training: the round whose pseudo-labelled target samples are loaded
        self.pseudo_round = 0
        self.pseudo: list[Any] = []
        # divergence guard (see _diverged): rollbacks so far, their metrics.jsonl events,
        # and per-optimiser runs of consecutive skipped updates kept on the device
        self.rollbacks = 0
        self.events: list[dict[str, Any]] = []
        self._bad_run: dict[int, torch.Tensor] = {}
        self._bad_max: torch.Tensor | None = None
        if resume_state is not None:
            self._load(resume_state)
        # DDP wrappers (the modules themselves in one process). self.model and
        # self.discs stay the plain modules: state, validation and saving use those.
        self.g = distributed.wrap(self.model, self.device)
        self.d_ddp = [distributed.wrap(d, self.device) for d in self.discs]

    def _fresh_ema(self) -> Any:
        """A new moving average of G's current weights (``None`` when ``ema`` is 0)."""
        if self.cfg.ema <= 0:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.ema)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated, selected and saved: G's moving average if ``ema``, else G."""
        return self.model if self.ema is None else self.ema.module

    # ------------------------------------------------------------------ setup pieces
    def _convert_sync_bn(self) -> None:
        """BatchNorm -> SyncBatchNorm in G and the discriminators (``--sync-bn``).

        Batch statistics then come from the global batch (N x batch_size), which matters
        when the per-rank batch is small. The state dict keys do not change, so runs
        stay loadable by a plain model. SyncBatchNorm has CUDA kernels only.
        """
        if self.device.type != "cuda":
            raise InputError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                             "drop --sync-bn for a CPU run")
        convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
        self.model = convert(self.model)
        self.discs = [convert(d) for d in self.discs]

    def _build_augment(self) -> Any:
        """Augment (with the stain jitter folded in) or StainJitter alone, on the device."""
        from ..data.augment import Augment, StainJitter

        if self.cfg.augment:
            return Augment(stain_jitter=self.cfg.stain_jitter,
                           acquisition=self.cfg.acquisition_jitter).to(self.device)
        if self.cfg.stain_jitter > 0:
            return StainJitter(self.cfg.stain_jitter).to(self.device)
        return None

    def _state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "discs": [d.state_dict() for d in self.discs],
            "opt_g": self.opt_g.state_dict(),
            "opt_d": [o.state_dict() for o in self.opt_d],
            "best_score": self.best_score,
            "best_epoch": -1 if self.best_epoch is None else self.best_epoch,
            "rng": rng_state(),
            "disc_specs": list(self.cfg.discs),
            "rollbacks": self.rollbacks,
            "ema": None if self.ema is None else self.ema.module.state_dict(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        if list(state.get("disc_specs", [])) != list(self.cfg.discs):
            raise InputError("state.pt was written for other discriminators than the config's")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state.get("ema") or state["model"])
        for d, sd in zip(self.discs, state["discs"], strict=True):
            d.load_state_dict(sd)
        self.opt_g.load_state_dict(state["opt_g"])
        for o, sd in zip(self.opt_d, state["opt_d"], strict=True):
            o.load_state_dict(sd)
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = None if state["best_epoch"] < 0 else int(state["best_epoch"])
        set_rng_state(state["rng"])
        self.rollbacks = int(state.get("rollbacks", 0))
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()
                    if ln.strip()]
            self.records = [r for r in rows if "event" not in r][: self.epoch]
            self.events = [r for r in rows if "event" in r and r["epoch"] <= self.epoch]
        if self.best_epoch is not None and self.best_epoch < len(self.records):
            self.best_record = self.records[self.best_epoch]

    def _loader(self, samples: list[Any], with_masks: bool, epoch: int, stream: int,
                tag: int = 0) -> Iterator:
        """An iterator over this epoch's batches: crops and order depend on (seed, epoch).

        ``tag`` tells apart datasets of one stream with other masks (self-training rounds).
        """
        from torch.utils.data import DataLoader

        from ..data.dataset import CropDataset

        key = (stream, with_masks, tag)
        ds = self._datasets.get(key)
        if ds is None:  # one dataset per stream: it keeps the decoded images in memory
            ds = CropDataset(samples, self.cfg.image_size,
                             length=self.steps * self.cfg.batch_size * self.world,
                             seed=self.cfg.seed * 10 + stream, with_masks=with_masks)
            self._datasets[key] = ds
        ds.set_epoch(epoch)
        if self.world > 1:  # each rank a disjoint share of the epoch's crops
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(ds, num_replicas=self.world, rank=self.rank,
                                         shuffle=True, drop_last=True,
                                         seed=_epoch_seed(self.cfg.seed, 0, stream))
            sampler.set_epoch(epoch)
            return iter(DataLoader(ds, batch_size=self.cfg.batch_size, sampler=sampler,
                                   drop_last=True, num_workers=self.cfg.workers,
                                   pin_memory=self.device.type == "cuda"))
        order = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch, stream))
        return iter(DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=True,
                               generator=order, drop_last=True,
                               num_workers=self.cfg.workers,
                               pin_memory=self.device.type == "cuda"))

    def _prepare(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = batch["image"].to(self.device, non_blocking=True)
        mask = batch.get("mask")
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True).float()
        if self.normalizer is not None:
            image = self.normalizer(image)
        x = image.float() / 255.0
        if self.augment is not None:
            if isinstance(self.augment, StainJitterType()):
                x = self.augment(x)
            else:
                x, mask = self.augment(x, mask)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, mask

    def _autocast(self) -> Any:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    # ------------------------------------------------------------------ the steps
    def _real_masks(self, ys: torch.Tensor, yt: torch.Tensor | None) -> torch.Tensor:
        """The shape discriminator's "real" set: S masks, and T masks in sda."""
        if self.tgt_labelled and yt is not None:
            return torch.cat([ys, yt]).float()
        return ys.float()

    def _opt_step(self, opt: torch.optim.Optimizer, loss: torch.Tensor,
                  acc: dict[str, torch.Tensor]) -> None:
        # every rank skips if any rank's loss is non-finite: replicas must stay equal
        bad = distributed.all_reduce_max((~torch.isfinite(loss.detach())).float())
        acc["skipped"] = acc["skipped"] + bad
        self._count_bad(opt, bad)
        if self.fused:
            opt.found_inf = bad  # fused Adam skips the whole update when found_inf != 0
            opt.step()
            opt.found_inf = None
        elif bad.item() == 0:  # pragma: no cover - only without fused Adam
            opt.step()

    def _count_bad(self, opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """Track consecutive skipped updates of ``opt`` on the device (no host sync).

        The run grows by one per skipped update and drops to 0 at a finite one; it carries
        over epoch boundaries. ``_bad_max`` is the longest run seen since the last check.
        """
        run = (self._bad_run.get(id(opt), 0) + bad) * bad
        self._bad_run[id(opt)] = run
        self._bad_max = run if self._bad_max is None else torch.maximum(self._bad_max, run)

    def _add(self, acc: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        acc[key] = acc[key] + value if key in acc else value

    def _step(self, phase: str, src: dict[str, Any], tgt: dict[str, Any] | None,
              acc: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        xs, ys = self._prepare(src)
        xt = yt = None
        if tgt is not None:
            xt, yt = self._prepare(tgt)
        b = xs.shape[0]
        t_labelled = self.tgt_labelled or phase == "self"  # masks or pseudo-labels
        use_t = xt is not None and (phase != "seg" or t_labelled)
        x = torch.cat([xs, xt]) if use_t else xs
        if phase in ("disc", "adv"):  # what the discriminators answer, shared by the G and D steps
            real = self._real_masks(ys, yt)  # the shape D's "real" set
            dev = x.device
            domain_labels = torch.cat([torch.ones(b, device=dev),  # source 1, target 0
                                       torch.zeros(x.shape[0] - b, device=dev)])
            shape_labels = torch.cat([torch.ones(real.shape[0], device=dev),  # real 1,
                                      torch.zeros(x.shape[0], device=dev)])  # predicted 0

        if phase == "disc":  # G frozen: eval mode, no graph
            self.model.eval()
            with torch.no_grad(), self._autocast():  # plain module: no gradient to sync
                # eval mode: BatchNorm uses running statistics, so one pass (no split)
                logits, feats = self.model(x, return_features=True)
            self.model.train()
        else:
            for d in self.discs:
                d.requires_grad_(False)
            with self._autocast():
                split = b if (use_t and cfg.domain_batchnorm) else None
                if phase == "adv":
                    logits, feats = self.g(x, return_features=True, split=split)
                else:
                    logits, feats = self.g(x, split=split), {}
                l_seg = seg_loss(logits[:b], ys, cfg.dice_weight)
                if use_t and t_labelled:
                    l_seg = l_seg + seg_loss(logits[b:], yt, cfg.dice_weight)
                loss = l_seg
                if phase == "adv":
                    probs = torch.sigmoid(logits.float())
                    # plain discriminators (frozen): DDP would wait for their gradients
                    for name, disc in zip(self.disc_names, self.discs, strict=True):
                        if disc.kind == "shape":
                            # mixed batch [real; predicted] as in the D step, so the
                            # shape D's BatchNorm sees the same composition; only the
                            # predictions' logits enter G's loss (true label 0: predicted)
                            out = disc({"mask": torch.cat([real, probs])})
                            out = {h: v[real.shape[0]:] for h, v in out.items()}
                            true = shape_labels[real.shape[0]:]
                        else:
                            out = disc({**feats, "mask": probs})  # features and/or output space
                            true = domain_labels
                        for head, logit in out.items():
                            term = generator_adv_term(logit, true, cfg.adv_loss)
                            self._add(acc, f"adv_{name}.{head}", term)
                            loss = loss + disc.weights[head] * term
            self._add(acc, "seg", l_seg)
            self._add(acc, "g_total", loss)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self._opt_step(self.opt_g, loss, acc)
            if self.ema is not None:
                self.ema.update(self.model)
            for d in self.discs:
                d.requires_grad_(True)
        if phase in ("seg", "self"):
            return

        # ---- D update on detached features / probabilities
        feats_d = {k: v.detach() for k, v in feats.items()}
        probs_d = torch.sigmoid(logits.detach().float())
        for name, disc, ddp_disc, opt in zip(self.disc_names, self.discs, self.d_ddp,
                                             self.opt_d, strict=True):
            with self._autocast():
                if disc.kind == "shape":
                    inputs, labels = {"mask": torch.cat([real, probs_d])}, shape_labels
                else:
                    inputs, labels = {**feats_d, "mask": probs_d}, domain_labels
                out = ddp_disc(inputs)  # its own DDP wrapper: averages this D's grads
                d_loss = torch.zeros((), device=x.device)
                for head, logit in out.items():
                    term = F.binary_cross_entropy_with_logits(logit.float(), labels)
                    d_loss = d_loss + term
                    self._add(acc, f"d_{name}.{head}", term)
                    correct = ((logit.detach().float() > 0).float() == labels).float().sum()
                    self._add(acc, f"acc_{name}.{head}", correct / labels.numel())
            opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self._opt_step(opt, d_loss, acc)

    # ------------------------------------------------------------------ self-training
    def _pseudo_folder(self, round_: int) -> Path:
        return self.run_dir / "pseudo" / f"round-{round_}"

    def _self_train_round(self, epoch: int, progress: Any) -> dict[str, Any] | None:
        """Enter ``epoch``'s self-training round: label and reset at its first epoch.

        At a round's first epoch: the model (the average if ``ema``) labels the target
        training split into ``pseudo/round-R/`` (rank 0 writes, every rank reads), G takes
        that model's weights, and G's Adam and the average start afresh -- what the
        measured recipe did as a new ``--init`` run per round. Later epochs of a round only
        reload the labels if needed (a resumed run). Returns the labels' summary when they
        were just written, else None.
        """
        round_, first = self_train_round(self.cfg, epoch) or (0, False)
        if not round_ or (not first and self.pseudo_round == round_):
            return None
        folder = self._pseudo_folder(round_)
        summary = None
        if first:
            summary = self._write_pseudo_labels(folder, round_, progress) if self.main else None
            distributed.barrier()  # the labels are on disk before any rank reads them
            self._restart_generator()
        from dataclasses import replace

        self.pseudo = [replace(s, mask=folder / f"{s.name}.png") for s in self.tgt_train]
        missing = [s.mask for s in self.pseudo if not s.mask.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: pseudo-label of self-training round {round_} is "
                             "missing; the run folder is incomplete (start a new run)")
        self.pseudo_round = round_
        self._datasets = {k: v for k, v in self._datasets.items() if k[2] == 0}
        return summary

    @torch.no_grad()
    def _write_pseudo_labels(self, folder: Path, round_: int, progress: Any) -> dict[str, Any]:
        from ..data.io import read_image, write_image

        model = self.eval_model
        was_training = model.training
        model.eval()
        task = None
        if progress is not None:
            task = progress.add_task(f"self-training round {round_}: labelling the target",
                                     total=len(self.tgt_train), loss="")
        foreground = 0.0
        for s in self.tgt_train:
            prob = predict_probs(model, read_image(s.image), self.device, self.normalizer,
                                 self.amp)
            mask = (prob > self.cfg.threshold).cpu().numpy()
            foreground += float(mask.mean())
            write_image(folder / f"{s.name}.png", mask)
            if task is not None:
                progress.update(task, advance=1)
        model.train(was_training)
        return {"round": round_, "images": len(self.tgt_train), "folder": str(folder),
                "foreground": round(foreground / max(len(self.tgt_train), 1), 4)}

    def _restart_generator(self) -> None:
        """G from its averaged weights, a fresh Adam (current lr) and a fresh average."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
            self.ema = self._fresh_ema()
        lr = float(self.opt_g.param_groups[0]["lr"])  # keeps a rollback's lowering
        self.opt_g, self.fused = _make_adam(list(self.model.parameters()), lr,
                                            (self.cfg.beta1, self.cfg.beta2), self.device)
        self._bad_run.clear()
        self._bad_max = None

    # ------------------------------------------------------------------ validation
    def _val_items(self, which: str) -> list:
        if which not in self._val_cache:
            samples = self.src_val if which == "source" else self.tgt_val
            self._val_cache[which] = load_domain_images(
                [s for s in samples if s.mask is not None], with_masks=True)
        return self._val_cache[which]

    def validate(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        kw = dict(threshold=self.cfg.threshold, normalizer=self.normalizer, amp=self.amp)
        if self.src_val:
            out["source"] = evaluate_model(self.eval_model, self._val_items("source"),
                                           self.device, **kw)
        if any(s.mask is not None for s in self.tgt_val):
            key = "target_oracle" if self.oracle else "target"
            out[key] = evaluate_model(self.eval_model, self._val_items("target"),
                                      self.device, **kw)
        return {k: v for k, v in out.items() if v}

    def _score(self, val: dict[str, dict[str, float]]) -> float | None:
        sel = self.cfg.selection
        if sel == "last":
            return None
        key = "source" if sel == "source" else ("target_oracle" if self.oracle else "target")
        return val.get(key, {}).get("dice", -math.inf)

    # ------------------------------------------------------------------ run folder
    def _meta(self) -> dict[str, Any]:
        norm = None
        if self.normalizer is not None:
            norm = normalizer_to_meta(self.cfg.normalize, self.normalizer)
        return {
            "backbone": self.cfg.backbone,
            "image_size": self.cfg.image_size,
            "threshold": self.cfg.threshold,
            "normalizer": norm,
            "mode": self.cfg.mode,
            "discs": list(self.cfg.discs),
            "input_range": "rgb/255 (float in [0, 1], after the normaliser if any)",
        }

    def _write_metrics(self) -> None:
        """One line per epoch; a rollback event goes just before the epoch it retried."""
        rows: list[dict[str, Any]] = []
        events = sorted(self.events, key=lambda e: e["epoch"])
        for record in self.records:
            while events and events[0]["epoch"] <= record["epoch"]:
                rows.append(events.pop(0))
            rows.append(record)
        rows.extend(events)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_text(self.run_dir / METRICS_FILE, text)

    # ------------------------------------------------------------------ divergence
    def _diverged(self, epoch: int, record: dict[str, Any]) -> bool:
        """Check the epoch just trained; roll back and return True if it diverged.

        Two signs, read once per epoch: one optimiser skipped ``divergence_steps``
        consecutive updates (non-finite loss; the run may span epochs), or a weight or
        BatchNorm statistic of G or a discriminator is no longer finite (a finite loss can
        still give an infinite gradient, and a skipped step still updates BatchNorm's
        running statistics). Nothing of the diverged epoch is written.
        """
        streak = 0 if self._bad_max is None else int(self._bad_max.item())
        self._bad_max = None
        if streak:
            record["max_skip_run"] = streak
        bad = non_finite([self.model.state_dict(), *(d.state_dict() for d in self.discs),
                          *([self.ema.module.state_dict()] if self.ema is not None else [])])
        # Under torchrun, rank 0's verdict for all: BatchNorm statistics may differ between
        # ranks (parameters and the skip streak do not), and ranks must roll back together.
        bad = distributed.broadcast_object(bad)
        k = self.cfg.divergence_steps
        if bad:
            reason = f"non-finite weights ({bad[0]}{' ...' if len(bad) > 1 else ''})"
        elif k and streak >= k:
            reason = f"{streak} consecutive non-finite losses (steps skipped)"
        else:
            return False
        if not k:
            raise RunFailure(f"training diverged in epoch {epoch + 1}: {reason}; "
                             "rollback is off (divergence_steps = 0)")
        self._rollback(epoch, reason)
        return True

    def _rollback(self, epoch: int, reason: str) -> None:
        """Reload the last epoch boundary's ``state.pt`` with lower learning rates.

        The state on disk is always the boundary before the epoch now running (it is
        written after every epoch), so the retried epoch sees the same crops. The lowered
        rates and the rollback count are saved at once: a resumed run keeps them.
        """
        count = self.rollbacks + 1
        path = self.run_dir / STATE_FILE
        if count > self.cfg.max_rollbacks:
            raise RunFailure(
                f"training diverged in epoch {epoch + 1} ({reason}) after {self.rollbacks} "
                f"rollback(s) (max_rollbacks = {self.cfg.max_rollbacks}); {path} holds the "
                f"last good state (epoch {epoch}); try a new run with a lower lr / disc_lr")
        self._load(load_state(path))
        distributed.barrier()  # every rank has read state.pt before rank 0 rewrites it below
        self.rollbacks = count
        factor = self.cfg.rollback_lr_factor
        for opt in (self.opt_g, *self.opt_d):
            for group in opt.param_groups:
                group["lr"] = float(group["lr"]) * factor
        self._bad_run.clear()
        self._bad_max = None
        lr = self.opt_g.param_groups[0]["lr"]
        disc_lr = [o.param_groups[0]["lr"] for o in self.opt_d]
        self.events.append({"event": "rollback", "epoch": epoch, "to_epoch": self.epoch,
                            "reason": reason, "rollback": count, "lr": lr,
                            "disc_lr": disc_lr})
        message = (f"warning: epoch {epoch + 1} diverged ({reason}); rolled back to the state "
                   f"after epoch {self.epoch}, learning rates x{factor:g} (G {lr:.3g}"
                   + (f", D {disc_lr[0]:.3g}" if disc_lr else "")
                   + f"); rollback {count} of at most {self.cfg.max_rollbacks}")
        if self.console is not None:
            self.console.print(message, style="yellow", highlight=False, markup=False)
        elif self.main:
            logger.warning(message)
        if self.main:
            self._write_metrics()
            save_state(path, self._state())

    def _epoch(self, epoch: int, phase: str, progress: Any, task: Any) -> dict[str, Any]:
        # + rank: ranks draw different augmentations (rank 0 keeps the one-process seed)
        _seed_everything(_epoch_seed(self.cfg.seed, epoch, 99) + self.rank)
        self.model.train()
        for d in self.discs:
            d.train()
        src_it = self._loader(self.src_train, True, epoch, 0)
        tgt_it = None
        if phase == "self":
            tgt_it = self._loader(self.pseudo, True, epoch, 1, tag=self.pseudo_round)
        elif self.tgt_train and (phase != "seg" or self.tgt_labelled):
            tgt_it = self._loader(self.tgt_train, self.tgt_labelled, epoch, 1)
        acc: dict[str, torch.Tensor] = {"skipped": torch.zeros((), device=self.device)}
        start = time.perf_counter()
        for step in range(self.steps):
            src = next(src_it)
            tgt = next(tgt_it) if tgt_it is not None else None
            self._step(phase, src, tgt, acc)
            if progress is not None:
                desc = ""
                if step % 10 == 9 or step == self.steps - 1:  # a sync every 10 steps only
                    key = "g_total" if "g_total" in acc else next(
                        (k for k in acc if k.startswith("d_")), None)
                    g = acc.get(key) if key else None
                    if g is not None:
                        desc = f" loss {float(g) / (step + 1):.4f}"
                    progress.update(task, advance=1, loss=desc)
                else:
                    progress.update(task, advance=1)
        sums = distributed.all_reduce_mean(acc)  # one sync per epoch; mean over ranks
        skipped = int(round(sums.pop("skipped")))
        losses = {k: v / self.steps for k, v in sums.items() if not k.startswith("acc_")}
        disc_acc = {k[4:]: v / self.steps for k, v in sums.items() if k.startswith("acc_")}
        train_seconds = time.perf_counter() - start
        # rank 0 validates; every rank gets its result so all select the same epoch
        val = distributed.broadcast_object(self.validate() if self.main else None)
        return {
            "epoch": epoch,
            "phase": phase,
            "losses": losses,
            "disc_acc": disc_acc,
            "skipped_steps": skipped,
            "val": val,
            "seconds": round(time.perf_counter() - start, 3),
            "train_seconds": round(train_seconds, 3),
            "steps": self.steps,
        }

    def fit(self, max_epochs: int | None = None) -> TrainResult:
        """Train from ``self.epoch`` to the end (or ``max_epochs`` more epochs)."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, dumps_toml(self.cfg))
            if self.epoch == 0:
                save_state(self.run_dir / STATE_FILE, self._state())
        start = time.perf_counter()
        end = len(self.phases) if max_epochs is None else min(len(self.phases),
                                                              self.epoch + max_epochs)
        last_phase = self.phases[-1] if self.phases else "seg"
        interrupted = False
        with _sigterm_as_interrupt(), self._progress() as progress:
            try:
                while self.epoch < end:
                    epoch = self.epoch
                    phase = self.phases[epoch]
                    task = None
                    if progress is not None:
                        task = progress.add_task(f"epoch {epoch + 1}/{len(self.phases)} {phase}",
                                                 total=self.steps, loss="")
                    pseudo = self._self_train_round(epoch, progress) if phase == "self" else None
                    record = self._epoch(epoch, phase, progress, task)
                    if pseudo:
                        record["pseudo"] = pseudo
                    if self._diverged(epoch, record):
                        continue  # rolled back: self.epoch is the last good boundary again
                    _hold_interrupts(True)  # the epoch's files are written whole, then stop
                    selected = False
                    if phase == last_phase:
                        score = self._score(record["val"])
                        if score is None or score > self.best_score:
                            self.best_score = -math.inf if score is None else score
                            self.best_epoch = epoch
                            self.best_record = record
                            selected = True
                            if self.main:
                                save_model(self.run_dir, self.eval_model, self._meta())
                    record["selected"] = selected
                    self.records.append(record)
                    self.epoch = epoch + 1
                    if self.main:
                        self._write_metrics()
                        save_state(self.run_dir / STATE_FILE, self._state())
                        write_curves(self.run_dir / "curves.png", self.records)
                    _hold_interrupts(False)  # raises KeyboardInterrupt if a signal came
                    if progress is not None and task is not None:
                        progress.update(task, description=progress.tasks[-1].description
                                        + _val_text(record["val"]))
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            if self.console is not None:
                self.console.print(
                    f"interrupted: state after epoch {self.epoch} is in "
                    f"{self.run_dir / STATE_FILE}; continue with "
                    f"stainadapt train --resume {self.run_dir}", style="yellow")
            raise ReportedInterrupt
        if self.epoch >= len(self.phases) and self.main:
            if self.best_epoch is None:  # no epoch of the last phase ran (0 epochs)
                save_model(self.run_dir, self.eval_model, self._meta())
            self._write_samples()
        if os.environ.get(distributed.CHECKSUM_ENV):
            self._write_checksum()
        result = TrainResult(
            run_dir=self.run_dir, epochs=self.epoch, best_epoch=self.best_epoch,
            best=self.best_record, records=self.records,
            skipped_steps=sum(r.get("skipped_steps", 0) for r in self.records),
            seconds=time.perf_counter() - start,
        )
        if self.console is not None:
            self.console.print(summary_table(result, self.cfg, self.oracle))
        return result

    def _write_checksum(self) -> None:
        """Debug (``STAINADAPT_DDP_CHECKSUM=1``): ``rank{r}.checksum`` of G + D parameters.

        The one file a non-zero rank writes: it lets a test check that data-parallel
        training kept every replica bit-identical.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        digest = distributed.parameter_digest([self.model, *self.discs])
        atomic_write_text(self.run_dir / f"rank{self.rank}.checksum", digest)

    def _progress(self) -> Any:
        if not self.show_progress:
            return contextlib.nullcontext(None)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                        console=self.console, transient=False)

    def _write_samples(self) -> None:
        """Overlays of the selected model on a few validation images of each domain."""
        if self.cfg.samples <= 0:
            return
        from ..runs import load_model

        try:
            model, _ = load_model(self.run_dir, device=self.device)
        except InputError:  # pragma: no cover - model.safetensors always exists here
            model = self.eval_model
        folder = self.run_dir / "samples"
        for which, samples in (("source", self.src_val), ("target", self.tgt_val)):
            chosen = samples[: self.cfg.samples]
            if not chosen:
                continue
            for name, image, mask in load_domain_images(chosen, with_masks=True):
                prob = predict_probs(model, image, self.device, self.normalizer, self.amp)
                pred = (prob > self.cfg.threshold).cpu().numpy()
                write_overlay(folder / f"{which}_{name}.png", image, pred, mask)


# --------------------------------------------------------------------------- helpers


def StainJitterType() -> type:  # noqa: N802 - a lazily imported class
    from ..data.augment import StainJitter

    return StainJitter


def _init_from_run(model: torch.nn.Module, run: str, backbone: str) -> None:
    """Load G's starting weights from a run folder (``--init``), refusing a mismatch.

    Why: the paper's schedule trains G on the source for s0 epochs before any
    discriminator; a finished source-only run *is* that G, so adapting it skips the
    pretraining (the demo and the paper table share one source-only G between methods).
    """
    from ..runs import read_meta, read_weights

    meta = read_meta(run)
    if meta["backbone"] != backbone:
        raise InputError(f"{run}: --init has backbone {meta['backbone']!r}, this run "
                         f"{backbone!r}; give --backbone {meta['backbone']}")
    try:  # straight into this run's network: no second network is built
        model.load_state_dict(read_weights(run), strict=True)
    except RuntimeError:
        raise InputError(f"{run}: --init weights do not fit this network "
                         "(different decoder channels?)") from None


def _unmasked(sample: Any) -> Any:
    from dataclasses import replace

    return replace(sample, mask=None)


def _unique_names(specs: list[str]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        base = spec.partition(":")[0].strip()
        name, k = base, 2
        while name in names:
            name, k = f"{base}{k}", k + 1
        names.append(name)
    return names


def _val_text(val: dict[str, dict[str, float]]) -> str:
    parts = [f" {k} dice {v['dice']:.3f}" for k, v in val.items() if "dice" in v]
    return "".join(parts)


# While an epoch boundary's files are written, SIGINT/SIGTERM are noted, not raised.
_HOLD = {"active": False, "on": False, "pending": False}


def _hold_interrupts(on: bool) -> None:
    """Hold back (``True``) or release SIGINT/SIGTERM inside :func:`_sigterm_as_interrupt`.

    A signal in the middle of the checkpoint writes would abandon the epoch's
    ``state.pt`` (atomic: the previous one stays) after ``metrics.jsonl`` already has
    the epoch, and the message would name the wrong epoch. Held, the writes finish and
    the interrupt is raised on release. Without an active guard this does nothing.
    """
    if not _HOLD["active"]:
        return
    _HOLD["on"] = on
    if not on and _HOLD["pending"]:
        _HOLD["pending"] = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C while training (main thread only).

    Both raise KeyboardInterrupt at once, except while :func:`_hold_interrupts` holds
    them during an epoch boundary's writes.
    """
    if threading.current_thread() is not threading.main_thread() or _HOLD["active"]:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _HOLD["on"]:
            _HOLD["pending"] = True
            return
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _HOLD.update(active=True, on=False, pending=False)
    try:
        yield
    finally:
        _HOLD.update(active=False, on=False, pending=False)
        for sig, old in previous.items():
            signal.signal(sig, old)


def summary_table(result: TrainResult, cfg: TrainConfig, oracle: bool = False) -> Any:
    from rich.table import Table

    table = Table(title=f"{cfg.mode} run: {result.run_dir}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("epochs", f"{result.epochs} ({', '.join(_phase_counts(cfg))})")
    sel = cfg.selection + (" (oracle: uses target masks)" if oracle else "")
    table.add_row("selection", sel)
    if result.best_epoch is not None:
        table.add_row("selected epoch", str(result.best_epoch + 1))
    for split, vals in ((result.best or {}).get("val") or {}).items():
        label = "target (oracle)" if split == "target_oracle" else split
        table.add_row(f"val {label} Dice", f"{vals['dice']:.4f} ± {vals['dice_std']:.4f}")
        table.add_row(f"val {label} accuracy",
                      f"{vals['accuracy']:.4f} ± {vals['accuracy_std']:.4f}")
    if result.records:
        accs = result.records[-1].get("disc_acc") or {}
        for k, v in accs.items():
            table.add_row(f"D accuracy {k} (last epoch)", f"{v:.3f}")
    table.add_row("skipped steps (non-finite)", str(result.skipped_steps))
    table.add_row("seconds", f"{result.seconds:.1f}")
    return table


def _phase_counts(cfg: TrainConfig) -> list[str]:
    phases = epoch_phases(cfg)
    return [f"{p} {phases.count(p)}" for p in PHASES if p in phases]


# --------------------------------------------------------------------------- entry points


def train(config: TrainConfig, console: Any = None, progress: bool = False,
          max_epochs: int | None = None) -> TrainResult:
    """Train a fresh run into ``config.out`` (refuses a folder that already has a run)."""
    out = Path(config.out)
    with distributed.session(resolve_device(config.device)):
        if (out / STATE_FILE).exists() or (out / METRICS_FILE).exists():
            raise InputError(f"{out}: already holds a run; use --resume {out} or another --out")
        distributed.barrier()  # every rank has checked before rank 0 writes anything
        return Trainer(config, console=console, progress=progress).fit(max_epochs=max_epochs)


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, console: Any = None,
           progress: bool = False, max_epochs: int | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last epoch boundary."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise InputError(f"{run}: no {CONFIG_FILE}; is this a stainadapt run folder?")
    values = load_toml(run / CONFIG_FILE)
    # runs written before the field existed trained without it (the default is now 1.0)
    values.setdefault("acquisition_jitter", 0.0)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in FROZEN_ON_RESUME:
        if key in given and given[key] != values.get(key):
            raise InputError(f"--resume: {key} cannot change in a resumed run "
                             f"(run has {values.get(key)!r}, got {given[key]!r})")
    values.update(given)
    values["out"] = str(run)
    config = TrainConfig(**values).validate()
    with distributed.session(resolve_device(config.device)):
        # Every rank reads state.pt (several nodes need the run folder on a shared
        # filesystem); rank 0 cannot rewrite it before the others have read it, since
        # finishing an epoch takes collectives with every rank.
        state = load_state(run / STATE_FILE)
        trainer = Trainer(config, console=console, progress=progress, resume_state=state)
        return trainer.fit(max_epochs=max_epochs)
