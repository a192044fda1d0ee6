"""The networks and optimisers of a run: G, the discriminators, the normaliser, Adam.

:func:`build_networks` seeds the RNGs with the run's seed before G and the
discriminators are created, so two runs with the same seed start from the same weights.
Each discriminator gets an Adam of its own over its own parameters, so one
discriminator's step never moves another's weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import InputError

__all__ = ["Networks", "build_networks", "make_adam", "generator_groups", "fresh_ema",
           "build_augment", "seed_everything", "unique_names", "init_from_run"]


def seed_everything(value: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs with one value."""
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def make_adam(params: list[torch.nn.Parameter] | list[dict[str, Any]], lr: float,
              betas: tuple[float, float], device: torch.device) -> tuple[torch.optim.Adam, bool]:
    """Fused Adam when the device supports it (skip-on-non-finite without a host sync).

    Returns the optimiser and whether it is fused: a fused Adam skips a whole update
    through its ``found_inf`` input, a plain one needs the host to decide.
    """
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True), True
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas), False


def generator_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """G's Adam parameter groups: one, or the encoder and the rest.

    With ``encoder_lr_mult`` 1 G is one group, as in every run before the option (so
    their ``state.pt`` still loads); otherwise the encoder (``model.encoder``) learns at
    ``lr * encoder_lr_mult`` in a group of its own, the decoder, head (and a stem) at
    ``lr``. Self-training's fresh Adam copies these groups, a rollback scales both, and
    ``state.pt`` keeps them, so the ratio holds for the whole run.
    With an lr schedule each group records its ``base_lr``, what the schedule scales.
    """
    if cfg.encoder_lr_mult == 1.0:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    else:
        encoder = list(model.encoder.parameters())
        ids = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if id(p) not in ids]
        groups = [{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_mult},
                  {"params": rest, "lr": cfg.lr}]
    if cfg.lr_schedule != "constant" or cfg.warmup_steps > 0:
        for group in groups:
            group["base_lr"] = group["lr"]
    return groups


def fresh_ema(model: torch.nn.Module, decay: float) -> Any:
    """A new moving average of ``model``'s current weights (``None`` when ``decay`` is 0).

    timm's ModelEmaV3 averages weights and BatchNorm statistics. Short adversarial runs
    swing from epoch to epoch; the average is what is validated, selected and saved, so
    one lucky or unlucky snapshot does not decide a run.
    """
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def build_augment(cfg: TrainConfig, device: torch.device) -> Any:
    """Augment (with the stain jitter folded in) or StainJitter alone, on the device."""
    from ..data.augment import StainJitter, augment_profile

    if cfg.augment:
        return augment_profile(cfg.augment_profile, stain_jitter=cfg.stain_jitter,
                               acquisition=cfg.acquisition_jitter).to(device)
    if cfg.stain_jitter > 0:
        return StainJitter(cfg.stain_jitter).to(device)
    return None


def unique_names(specs: list[str]) -> list[str]:
    """Metric names of the discriminators: the plugin name, numbered when repeated."""
    names: list[str] = []
    for spec in specs:
        base = spec.partition(":")[0].strip()
        name, k = base, 2
        while name in names:
            name, k = f"{base}{k}", k + 1
        names.append(name)
    return names


def init_from_run(model: torch.nn.Module, run: str, backbone: str,
                  downsample: float = 1.0) -> None:
    """Load G's starting weights from a run folder (``--init``), refusing a mismatch.

    The paper's schedule trains G on the source before any discriminator; a finished
    source-only run *is* that G, so adapting it skips the pretraining (the demo and the
    paper table share one source-only G between methods).
    """
    from ..runs import meta_downsample, read_meta, read_weights

    meta = read_meta(run)
    if meta["backbone"] != backbone:
        raise InputError(f"{run}: --init has backbone {meta['backbone']!r}, this run "
                         f"{backbone!r}; give --backbone {meta['backbone']}")
    scale = meta_downsample(meta)  # G learned its task at this scale
    if scale != float(downsample):
        raise InputError(f"{run}: --init was trained on tiles at downsample {scale:g}, this "
                         f"run at {float(downsample):g}; give --downsample {scale:g}")
    try:  # straight into this run's network: no second network is built
        model.load_state_dict(read_weights(run), strict=True)
    except RuntimeError:
        raise InputError(f"{run}: --init weights do not fit this network "
                         "(different decoder channels?)") from None
    if meta.get("input_norm"):  # the weights expect the input normalised as they were
        from ..models.encoders import InputNormalization

        model.input_norm = InputNormalization(meta["input_norm"]["mean"],
                                              meta["input_norm"]["std"])
        if meta.get("encoder"):
            model.encoder_record = meta["encoder"]


@dataclass
class Networks:
    """G, the discriminators (in ``cfg.discs`` order, with their metric names), the
    normaliser fitted to the reference image (or None), and the optimisers."""

    model: torch.nn.Module
    discs: list[Any]
    disc_names: list[str]
    normalizer: Any
    opt_g: torch.optim.Adam
    fused: bool
    opt_d: list[torch.optim.Adam]


def build_networks(cfg: TrainConfig, device: torch.device, world: int,
                   resuming: bool) -> Networks:
    """Seed, create G and the discriminators on ``device``, fit the normaliser, make Adam.

    ``--init`` is skipped when ``resuming``: the state then holds G's weights.
    Under torchrun with ``sync_bn`` BatchNorm becomes SyncBatchNorm (CUDA only).
    """
    from ..models.unet import SegmentationNet
    from ..registry import create

    seed_everything(cfg.seed)
    # a resumed run's state.pt holds G: its starting weights are not read again
    model = SegmentationNet(backbone=cfg.backbone, pretrained=cfg.pretrained, norm=cfg.norm,
                            load_weights=not resuming)
    # the scale every whole-image prediction resamples to (data/resample.py); copies of
    # G (its moving average, adapted copies) carry it along
    model.downsample = cfg.downsample
    if cfg.init and not resuming:
        init_from_run(model, cfg.init, cfg.backbone, cfg.downsample)
    discs = [create("discriminators", spec, model.feature_table) for spec in cfg.discs]
    normalizer = None
    if cfg.normalize:
        from ..data.io import read_image

        norm = create("normalizers", cfg.normalize)
        norm.fit(read_image(cfg.reference))
        normalizer = norm.to(device) if hasattr(norm, "to") else norm

    model.to(device)
    if cfg.target_statistics:
        model.target_statistics = initial_target_statistics(
            model, cfg.init if not resuming else None)
    for d in discs:
        d.to(device)
    if device.type == "cuda":  # channels_last
        model.to(memory_format=torch.channels_last)
        for d in discs:
            d.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world > 1:
        model, discs = _sync_batchnorm(model, discs, device)
    betas = (cfg.beta1, cfg.beta2)
    opt_g, fused = make_adam(generator_groups(model, cfg), cfg.lr, betas, device)
    opt_d = [make_adam(list(d.parameters()), cfg.disc_lr, betas, device)[0] for d in discs]
    return Networks(model, discs, unique_names(cfg.discs), normalizer, opt_g, fused, opt_d)


def initial_target_statistics(model: torch.nn.Module, init: str | None
                              ) -> dict[str, torch.Tensor]:
    """The target statistics a run starts from: ``--init``'s own if it kept some, else none
    (each layer then starts from G's statistics at its first target batch)."""
    from ..inference.adapt import read_adapted_state
    from ..runs import TARGET_STATS

    if init is None or not (Path(init) / TARGET_STATS).is_file():
        return {}
    state, _ = read_adapted_state(Path(init) / TARGET_STATS, model)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in state.items()}


def _sync_batchnorm(model: torch.nn.Module, discs: list[Any],
                    device: torch.device) -> tuple[torch.nn.Module, list[Any]]:
    """BatchNorm -> SyncBatchNorm in G and the discriminators (``--sync-bn``).

    Batch statistics then come from the global batch (N x batch_size), which matters
    when the per-rank batch is small. The state dict keys do not change, so runs
    stay loadable by a plain model. SyncBatchNorm has CUDA kernels only.
    """
    if device.type != "cuda":
        raise InputError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                         "drop --sync-bn for a CPU run")
    convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
    return convert(model), [convert(d) for d in discs]
