"""``stainadapt train``: parse the flags, merge them over ``--config``, run the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, is_tty, run_guarded

app = typer.Typer()

_SCHED = "Schedule"
_OPT = "Optimisation"
_DATA = "Data"


@app.command("train")
def train(
    source: Annotated[str | None, typer.Option(
        help="Source domain folder (images/ + masks/).", rich_help_panel=_DATA)] = None,
    target: Annotated[str | None, typer.Option(
        help="Target domain folder (images/; masks/ used only in sda).",
        rich_help_panel=_DATA)] = None,
    mode: Annotated[str | None, typer.Option(
        help="source-only, sda or uda (default uda).")] = None,
    disc: Annotated[list[str] | None, typer.Option(
        "--disc", help="Discriminator spec, repeatable: --disc mirrored --disc shape "
        "or --disc single:layer=f9,weight=0.05.")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Encoder (default resnet34): a backbones plugin, any timm CNN by name and "
        "tag (convnext_tiny, resnet34.a1_in1k) or a hub model (hf-hub:org/name); see "
        "docs/encoders.md.")] = None,
    norm: Annotated[str | None, typer.Option(
        help="G's normalisation: batch (BatchNorm), group or instance (per-image "
        "statistics).")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Encoder weights: a local file (safetensors or state dict), or imagenet / "
        "default for the model's published weights through timm's Hugging Face cache "
        "(HF_HUB_OFFLINE=1: cache only).")] = None,
    init: Annotated[str | None, typer.Option(
        help="Start G from this run's model (e.g. a source-only run to adapt; same "
        "backbone); usually with --pretrain-epochs 0.")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder to write.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file with the same fields; flags override it.")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run in this folder from its last epoch.")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(
        help="s0: epochs of G alone (paper 50).", rich_help_panel=_SCHED)] = None,
    disc_epochs: Annotated[int | None, typer.Option(
        help="d0: epochs of the discriminators alone (paper 10).", rich_help_panel=_SCHED)] = None,
    adv_epochs: Annotated[int | None, typer.Option(
        help="Adversarial epochs (paper 100).", rich_help_panel=_SCHED)] = None,
    self_train_rounds: Annotated[int | None, typer.Option(
        help="After the schedule: rounds of self-training, each labelling the target "
        "training images with G (p > threshold) and training on S labels + those "
        "pseudo-labels (uda or source-only; not in the paper; 0: off).",
        rich_help_panel=_SCHED)] = None,
    self_train_epochs: Annotated[int | None, typer.Option(
        help="Epochs per self-training round (12).", rich_help_panel=_SCHED)] = None,
    self_train_keep: Annotated[float | None, typer.Option(
        help="Share of each class's pixels (glomerulus, background) a self-training round "
        "keeps as pseudo-labels, the most confident; the rest are left out of the loss "
        "(1: every pixel).", rich_help_panel=_SCHED)] = None,
    self_train_adapt: Annotated[str | None, typer.Option(
        help="How a self-training round labels the target: none (the model as trained) "
        "or bn (BatchNorm statistics re-estimated on the target first, as predict "
        "--adapt bn).", rich_help_panel=_SCHED)] = None,
    recipe: Annotated[str | None, typer.Option(
        help="Named recipe the other settings start from: real (small real data sets: "
        "instance normalisation, Dice + BCE, warm-up + cosine lr, glomerulus-centred "
        "crops) or paper (the paper's plain recipe). A config file and flags override "
        "it.")] = None,
    steps: Annotated[int | None, typer.Option(
        help="G-alone optimiser steps (s0) as one number: pretrain epochs = steps / "
        "steps per epoch. Without discriminators (source-only) the whole budget, unless "
        "--adv-epochs is given.", rich_help_panel=_SCHED)] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(
        help="Optimiser steps per epoch (0: source train images / (batch size x processes)).",
        rich_help_panel=_SCHED)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size per domain and per process (paper 4); under torchrun with N "
        "processes the global batch is N x this.", rich_help_panel=_OPT)] = None,
    lr: Annotated[float | None, typer.Option(
        help="G's Adam learning rate (paper 1e-3).", rich_help_panel=_OPT)] = None,
    disc_lr: Annotated[float | None, typer.Option(
        help="Each discriminator's Adam learning rate.", rich_help_panel=_OPT)] = None,
    disc_steps: Annotated[int | None, typer.Option(
        help="Discriminator updates per G update in the adversarial phase (1).",
        rich_help_panel=_OPT)] = None,
    disc_label_smoothing: Annotated[float | None, typer.Option(
        help="Discriminator targets y * (1 - s) + s / 2 instead of 0/1 (0: off).",
        rich_help_panel=_OPT)] = None,
    dice_weight: Annotated[float | None, typer.Option(
        help="Add this times a soft Dice loss to L_seg.", rich_help_panel=_OPT)] = None,
    lr_schedule: Annotated[str | None, typer.Option(
        help="G's learning rate over the run: constant, cosine or poly (decay to 0).",
        rich_help_panel=_OPT)] = None,
    warmup_steps: Annotated[int | None, typer.Option(
        help="Linear learning-rate warm-up over this many G steps.",
        rich_help_panel=_OPT)] = None,
    encoder_lr_mult: Annotated[float | None, typer.Option(
        help="The encoder's learning rate as a multiple of --lr (its own parameter "
        "group; e.g. 0.1 for a pretrained encoder).", rich_help_panel=_OPT)] = None,
    freeze_encoder_epochs: Annotated[int | None, typer.Option(
        help="Keep the encoder frozen (no updates, BatchNorm statistics fixed) for the "
        "first N pretraining epochs, then train it.", rich_help_panel=_OPT)] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Crop side in pixels (multiple of 32).", rich_help_panel=_DATA)] = None,
    mpp: Annotated[float | None, typer.Option(
        "--mpp", help="Microns per pixel of the training tiles: recorded in model.json so "
        "predict reads slides at this resolution (default: the source's tiles.json, from "
        "stainadapt tiles).", rich_help_panel=_DATA)] = None,
    downsample: Annotated[float | None, typer.Option(
        help="Train on the tiles this many times coarser than stored (2: half size), so a "
        "crop holds a whole glomerulus; predict resamples its inputs the same way (real "
        "recipe: 2).", rich_help_panel=_DATA)] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Seeded validation split per domain (0.2).", rich_help_panel=_DATA)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    amp: Annotated[str | None, typer.Option(
        help="Mixed precision: auto (bf16 on CUDA), bf16 or off.")] = None,
    sync_bn: Annotated[bool | None, typer.Option(
        "--sync-bn/--no-sync-bn", help="Under torchrun: BatchNorm statistics over every "
        "process's batch (SyncBatchNorm, CUDA only; no effect in one process).",
        rich_help_panel=_OPT)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Data-loading worker processes.", rich_help_panel=_DATA)] = None,
    select: Annotated[str | None, typer.Option(
        help="Model selection: last, source or target (default: target in sda, last in "
        "uda or with self-training, source in source-only; target in uda is an "
        "oracle).")] = None,
    bn_recalibration: Annotated[int | None, typer.Option(
        help="Before each validation, re-estimate BatchNorm statistics on this many "
        "batches of plain source crops (0: off).", rich_help_panel=_OPT)] = None,
    select_smoothing: Annotated[float | None, typer.Option(
        help="Select on a moving average of the validation Dice over epochs (weight of "
        "the past, 0-1; 0: each epoch's own).")] = None,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="Geometric/photometric augmentation.",
        rich_help_panel=_DATA)] = None,
    adv_loss: Annotated[str | None, typer.Option(
        help="G's adversarial term: flip (label flipping, non-saturating; default) or "
        "minimax (the paper's -alpha*L_D read literally).", rich_help_panel=_OPT)] = None,
    ema: Annotated[float | None, typer.Option(
        help="Decay of a moving average of G's weights used for validation, selection and "
        "the saved model (0: off; 0.95 for short runs, 0.999 for long ones).",
        rich_help_panel=_OPT)] = None,
    target_statistics: Annotated[bool | None, typer.Option(
        "--target-statistics/--no-target-statistics",
        help="Keep BatchNorm statistics of the target stain apart (target-stats.safetensors;"
        " predict --adapt target uses them). BatchNorm models with a target only.",
        rich_help_panel=_OPT)] = None,
    augment_profile: Annotated[str | None, typer.Option(
        help="light (flips, turns, small affine) or strong (any rotation, scale "
        "0.7-1.4, elastic, gamma).", rich_help_panel=_DATA)] = None,
    foreground_share: Annotated[float | None, typer.Option(
        help="Share of labelled crops centred on a glomerulus (0: uniform crops).",
        rich_help_panel=_DATA)] = None,
    stain_jitter: Annotated[float | None, typer.Option(
        help="Stain jitter strength in OD space (0: off).", rich_help_panel=_DATA)] = None,
    fda_beta: Annotated[float | None, typer.Option(
        help="Fourier amplitude swap: source crops take the target's low frequencies "
        "(colour, stain density) in a band of this share of the crop (0: off; 0.01-0.09)."
        " Needs --target, also in source-only.", rich_help_panel=_DATA)] = None,
    acquisition_jitter: Annotated[float | None, typer.Option(
        help="Blur, noise and contrast jitter strength (scanner variation; 0: off).",
        rich_help_panel=_DATA)] = None,
    normalize: Annotated[str | None, typer.Option(
        help="Normaliser spec applied to every input before G (e.g. macenko).",
        rich_help_panel=_DATA)] = None,
    reference: Annotated[str | None, typer.Option(
        help="Reference image the normaliser is fitted to.", rich_help_panel=_DATA)] = None,
    threshold: Annotated[float | None, typer.Option(help="Mask threshold (0.5).")] = None,
    samples: Annotated[int | None, typer.Option(
        help="Overlay pictures per domain written to samples/.")] = None,
) -> None:
    """Train G (and the discriminators): source-only, supervised DA or unsupervised DA.

    Several GPUs or nodes: start it with torchrun (torchrun --nproc-per-node N -m
    stainadapt train ...); rank 0 writes the run folder.
    """
    from .. import distributed
    from ..engine import trainer
    from ..recipes import training_config

    flags = {
        "source": source, "target": target, "mode": mode, "discs": disc or None,
        "backbone": backbone, "norm": norm, "pretrained": pretrained, "init": init, "out": out,
        "pretrain_epochs": pretrain_epochs, "disc_epochs": disc_epochs,
        "adv_epochs": adv_epochs, "steps_per_epoch": steps_per_epoch, "steps": steps,
        "self_train_rounds": self_train_rounds, "self_train_epochs": self_train_epochs,
        "self_train_keep": self_train_keep, "self_train_adapt": self_train_adapt,
        "batch_size": batch_size, "lr": lr, "disc_lr": disc_lr, "dice_weight": dice_weight,
        "disc_steps": disc_steps, "disc_label_smoothing": disc_label_smoothing,
        "ema": ema, "target_statistics": target_statistics, "adv_loss": adv_loss,
        "lr_schedule": lr_schedule,
        "warmup_steps": warmup_steps, "encoder_lr_mult": encoder_lr_mult,
        "freeze_encoder_epochs": freeze_encoder_epochs,
        "augment_profile": augment_profile, "foreground_share": foreground_share,
        "select_smoothing": select_smoothing, "bn_recalibration": bn_recalibration,
        "image_size": image_size, "mpp": mpp, "downsample": downsample,
        "val_fraction": val_fraction, "seed": seed,
        "device": device, "amp": amp, "workers": workers, "sync_bn": sync_bn,
        "select": select,
        "augment": augment, "stain_jitter": stain_jitter, "fda_beta": fda_beta,
        "acquisition_jitter": acquisition_jitter, "normalize": normalize,
        "reference": reference, "threshold": threshold, "samples": samples,
    }

    def go() -> object:
        if resume is not None:
            if config is not None:
                from ..errors import InputError

                raise InputError("--resume takes the run's own config.toml; drop --config")
            if recipe is not None:
                from ..errors import InputError

                raise InputError("--resume keeps the run's own recipe; drop --recipe")
            return trainer.resume(resume, flags, console=console, progress=is_tty())
        cfg = training_config(recipe, config, flags)
        return trainer.train(cfg, console=console, progress=is_tty())

    result = run_guarded(go)
    if not distributed.is_main():
        return
    pseudo = ", pseudo/ (self-training labels)" if (result.run_dir / "pseudo").is_dir() else ""
    console.print(f"run folder: {result.run_dir} (model.safetensors, metrics.jsonl, "
                  f"curves.png, samples/{pseudo})")
