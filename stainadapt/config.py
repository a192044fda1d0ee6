"""Configuration of a training run: one dataclass, TOML in and out.

A run is described by :class:`TrainConfig`. It can come from a TOML file (``--config``),
from command-line flags, or both: flags override the file. The resolved configuration is
written into the run folder as ``config.toml`` so that a run can be repeated or resumed
from its folder alone.

TOML has no null, so fields whose value is ``None`` are left out of the written file and
come back as their default (which is ``None`` for every optional field).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError
from .schedule import epoch_phases

__all__ = [
    "MODES",
    "SELF_TRAIN_ADAPT",
    "SELECTS",
    "AMPS",
    "LR_SCHEDULES",
    "AUGMENT_PROFILES",
    "TrainConfig",
    "load_toml",
    "dumps_toml",
    "resolve_config",
]

MODES = ("source-only", "sda", "uda")
SELECTS = ("last", "source", "target")
AMPS = ("auto", "bf16", "off")
LR_SCHEDULES = ("constant", "cosine", "poly")  # engine/lr_schedule.py
AUGMENT_PROFILES = ("light", "strong")  # data/augment.py
# G's normalisation layers (models/batchnorm.py): BatchNorm, GroupNorm over up to 32 groups,
# or instance normalisation (one group per channel); the last two use each image's own
# statistics
NORMS = ("batch", "group", "instance")
ADV_LOSSES = ("minimax", "flip")  # G's adversarial term, see engine/losses.py
SELF_TRAIN_ADAPT = ("none", "bn")  # how self-training labels the target


@dataclass
class TrainConfig:
    """Every knob of a training run (names match the CLI flags with ``-`` -> ``_``)."""

    # the named recipe the other fields started from (stainadapt.recipes.TRAINING); the
    # dataclass defaults are the "paper" recipe
    recipe: str = "paper"
    source: str = ""
    target: str | None = None
    out: str = "runs/run"
    mode: str = "uda"
    discs: list[str] = field(default_factory=list)
    backbone: str = "resnet34"
    pretrained: str | None = None
    # G's normalisation layers: "batch" (the backbone's BatchNorm), "group" or "instance"
    # (per-image statistics, models/batchnorm.py)
    norm: str = "batch"
    # G's starting weights: a run folder (or its model.safetensors), e.g. a source-only
    # run to adapt; its backbone must match. Usually with pretrain_epochs = 0.
    init: str | None = None
    # schedule (paper: s0 = 50, d0 = 10, adversarial = 100)
    pretrain_epochs: int = 50
    disc_epochs: int = 10
    adv_epochs: int = 100
    steps_per_epoch: int = 0  # 0: len(source train) // batch_size
    # s0 as a number of G steps (with steps_per_epoch > 0): pretrain_epochs becomes
    # steps / steps_per_epoch; 0: pretrain_epochs as given
    steps: int = 0
    batch_size: int = 4
    lr: float = 1e-3
    disc_lr: float = 1e-3
    # discriminator updates per G update in the adversarial phase (each on the step's
    # batch of G outputs), and the label smoothing of their targets: label y trains
    # towards y * (1 - s) + s / 2, so no discriminator is driven to certainty
    disc_steps: int = 1
    disc_label_smoothing: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    dice_weight: float = 0.0  # L_seg = BCE + dice_weight * soft Dice loss
    # G's learning rate over the run's G steps (engine/lr_schedule.py): "constant", or a
    # "cosine"/"poly" decay to 0 at the last step, after warmup_steps of linear ramp-up
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    # the encoder's learning rate as a multiple of lr (its own parameter group; e.g. 0.1
    # for a pretrained encoder). Older config.toml files call it encoder_lr_scale.
    encoder_lr_mult: float = 1.0
    # the encoder frozen (no updates, BatchNorm statistics fixed) during the first N
    # pretraining epochs, then trained; 0: never frozen
    freeze_encoder_epochs: int = 0
    # G's adversarial term (engine/losses.py): "flip" = alpha * BCE(D, flipped label), the
    # non-saturating form (default); "minimax" = -alpha * BCE(D, true label), the
    # paper's Eq. 4 as written, whose gradient fades where D is right
    adv_loss: str = "flip"
    # decay of an exponential moving average of G's weights and BatchNorm statistics,
    # updated after every G step; validation, selection and model.safetensors use the
    # average (0: off, the paper's plain weights). Short runs: 0.95; long ones: 0.999.
    ema: float = 0.0
    # G runs the source and the target part of a batch as separate BatchNorm batches
    # (SegmentationNet.forward(split=...)), so neither stain is normalised with the
    # other's statistics; false: one mixed batch of both domains
    domain_batchnorm: bool = True
    # with domain_batchnorm: the target part of every batch keeps BatchNorm running
    # statistics of its own (domain-specific statistics, DSBN-style; the weights stay
    # shared), written to target-stats.safetensors for `predict --adapt target`; the
    # model's own statistics then come from source batches only
    target_statistics: bool = False
    # Self-training after the schedule above (not in the paper; figures in
    # benchmarks/RESULTS.md, "BatchNorm handling and learning rates"): each round
    # labels the target *training* split with G's current model (p > threshold), then
    # trains G for self_train_epochs epochs on S labels + those pseudo-labels, no
    # discriminators. uda and source-only (with --target) only; target masks are never read.
    self_train_rounds: int = 0
    self_train_epochs: int = 12
    # the share of each class's pixels (glomerulus, background) a round keeps as
    # pseudo-labels, its most confident over the split (class-balanced, CBST-style); the
    # rest are unsure and left out of L_seg (data/pseudo_labels.py). 1: every pixel
    self_train_keep: float = 1.0
    # how a round labels the target: "none", with the model's statistics as trained (or
    # the target statistics it keeps); "bn", with BatchNorm statistics re-estimated on
    # the target training split first (AdaBN, as `predict --adapt bn`)
    self_train_adapt: str = "none"
    image_size: int = 256
    # microns per pixel of the training tiles (None: not known); recorded in model.json
    # so predict reads slides at the same resolution
    mpp: float | None = None
    # G sees the tiles this many times coarser than they are stored (box filter): crops
    # of image_size then hold a whole glomerulus and its surroundings. Recorded in
    # model.json; predict, evaluate and test-time adaptation resample every input the
    # same way and write masks at the input's own size (data/resample.py)
    downsample: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    # under torchrun: BatchNorm statistics over all ranks' batches (CUDA only)
    sync_bn: bool = False
    select: str | None = None  # None: target in sda, last in uda, source in source-only
    # before each validation, re-estimate the validated/saved model's BatchNorm statistics
    # on this many batches of plain (unaugmented, uniform) source crops; 0: keep the
    # running averages of the training batches (models/batchnorm.py)
    bn_recalibration: int = 0
    # source/target selection on an exponential moving average of the validation Dice
    # over epochs (this weight on the past; 0: each epoch's own Dice)
    select_smoothing: float = 0.0
    augment: bool = True
    # "light": flips, 90-degree turns, +-15 degrees, scale 0.9-1.1; "strong" adds any
    # rotation, scale 0.7-1.4, gamma and elastic deformation (data/augment.py)
    augment_profile: str = "light"
    # share of labelled crops centred on a glomerulus (data/sampling.py); 0: uniform
    foreground_share: float = 0.0
    stain_jitter: float = 0.0
    # Fourier-domain amplitude swap (FDA, data/fourier.py): every source crop takes the
    # low-frequency amplitude of a target crop (a centred band of half-side
    # floor(fda_beta * crop) frequencies), so G trains on source tissue in the target's
    # colours; needs a target domain (also in source-only); 0: off
    fda_beta: float = 0.0
    # blur, noise and lower contrast per image (data/augment.py acquisition_jitter), so
    # the domains cannot be told apart by their scanner alone; with ``augment`` only.
    # Figures: benchmarks/RESULTS.md, "Acquisition jitter".
    acquisition_jitter: float = 1.0
    normalize: str | None = None
    reference: str | None = None
    threshold: float = 0.5
    samples: int = 4  # overlays written to samples/
    # divergence (docs/reliability.md): after this many consecutive non-finite (skipped)
    # updates of one optimiser, or non-finite weights at an epoch boundary, roll back to
    # the last epoch boundary's state.pt with every learning rate times rollback_lr_factor;
    # give up (exit 1) after max_rollbacks rollbacks. divergence_steps = 0: never roll back.
    divergence_steps: int = 3
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Raise one :class:`InputError` naming the first bad field and why."""
        if not self.source:
            raise InputError("no source domain: give --source DIR (or 'source' in the config)")
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode in ("sda", "uda") and not self.target:
            raise InputError(f"mode {self.mode} needs a target domain: give --target DIR")
        if self.select is not None and self.select not in SELECTS:
            raise InputError(f"select {self.select!r} is not one of {', '.join(SELECTS)}")
        if self.disc_steps < 1:
            raise InputError(f"disc_steps must be >= 1, got {self.disc_steps}")
        if not 0.0 <= self.disc_label_smoothing < 1.0:
            raise InputError("disc_label_smoothing must be in [0, 1), got "
                             f"{self.disc_label_smoothing}")
        if self.adv_loss not in ADV_LOSSES:
            raise InputError(
                f"adv_loss {self.adv_loss!r} is not one of {', '.join(ADV_LOSSES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule {self.lr_schedule!r} is not one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.norm not in NORMS:
            raise InputError(f"norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.augment_profile not in AUGMENT_PROFILES:
            raise InputError(f"augment_profile {self.augment_profile!r} is not one of "
                             f"{', '.join(AUGMENT_PROFILES)}")
        if not 0.0 <= self.select_smoothing < 1.0:
            raise InputError(f"select_smoothing must be in [0, 1), got {self.select_smoothing}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise InputError(f"foreground_share must be in [0, 1], got {self.foreground_share}")
        if not (math.isfinite(self.encoder_lr_mult) and self.encoder_lr_mult > 0):
            raise InputError(f"encoder_lr_mult must be a positive number, "
                             f"got {self.encoder_lr_mult}")
        if self.steps:
            if self.steps_per_epoch <= 0:
                raise InputError("steps needs steps_per_epoch > 0 (e.g. --steps 600 "
                                 "--steps-per-epoch 10)")
            if self.steps % self.steps_per_epoch:
                raise InputError(f"steps {self.steps} must be a multiple of steps_per_epoch "
                                 f"{self.steps_per_epoch}")
            self.pretrain_epochs = self.steps // self.steps_per_epoch
        if not 0 <= self.freeze_encoder_epochs <= max(self.pretrain_epochs, 0):
            raise InputError(f"freeze_encoder_epochs must be in 0..pretrain_epochs "
                             f"({self.pretrain_epochs}), got {self.freeze_encoder_epochs}")
        if self.amp not in AMPS:
            raise InputError(f"amp {self.amp!r} is not one of {', '.join(AMPS)}")
        if self.mode == "source-only" and self.discs:
            raise InputError("mode source-only takes no --disc; use --mode uda or sda")
        if self.mode == "uda" and not self.discs:  # sda without --disc: joint S + T training
            raise InputError(
                "mode uda needs at least one --disc (e.g. --disc mirrored --disc shape)"
            )
        if self.self_train_rounds:
            if self.mode == "sda":
                raise InputError("self_train_rounds is for unlabelled targets (uda or "
                                 "source-only); sda already trains on the target's masks")
            if not self.target:
                raise InputError("self_train_rounds needs a target domain: give --target DIR")
            if self.self_train_epochs < 1:
                raise InputError("self_train_epochs must be >= 1 when self_train_rounds > 0")
        if not 0.0 < self.self_train_keep <= 1.0:
            raise InputError(f"self_train_keep must be in (0, 1], got {self.self_train_keep}")
        if self.self_train_adapt not in SELF_TRAIN_ADAPT:
            raise InputError(f"self_train_adapt {self.self_train_adapt!r} is not one of "
                             f"{', '.join(SELF_TRAIN_ADAPT)}")
        if self.self_train_adapt == "bn" and self.norm != "batch":
            raise InputError(f"self_train_adapt bn re-estimates BatchNorm statistics; this "
                             f"G normalises with {self.norm} norm (give --norm batch)")
        if self.target_statistics:
            if not self.target:
                raise InputError("target_statistics needs a target domain: give --target DIR")
            if not self.domain_batchnorm:
                raise InputError("target_statistics needs domain_batchnorm (source and "
                                 "target as separate BatchNorm batches)")
            if self.norm != "batch":
                raise InputError(f"target_statistics needs BatchNorm (--norm batch); norm "
                                 f"{self.norm!r} keeps no statistics")
        from .data.fourier import check_beta

        try:
            check_beta(self.fda_beta)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None
        if self.fda_beta > 0 and not self.target:
            raise InputError("fda_beta needs a target domain whose colours the source "
                             "crops take: give --target DIR")
        if self.image_size <= 0 or self.image_size % 32:
            raise InputError(f"image_size {self.image_size} must be a positive multiple of 32")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise InputError(f"mpp must be a positive number of microns per pixel, got {self.mpp}")
        from .data.resample import check_downsample

        try:
            check_downsample(self.downsample)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None
        for name in ("pretrain_epochs", "disc_epochs", "adv_epochs", "steps_per_epoch",
                     "workers", "samples", "self_train_rounds", "self_train_epochs", "steps",
                     "warmup_steps", "bn_recalibration"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("lr", "disc_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value}")
        for name in ("divergence_steps", "max_rollbacks"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("stain_jitter", "acquisition_jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be >= 0 (0: off), got {value}")
        if not (math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise InputError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if not (math.isfinite(self.rollback_lr_factor) and 0 < self.rollback_lr_factor <= 1):
            raise InputError(
                f"rollback_lr_factor must be in (0, 1], got {self.rollback_lr_factor}")
        if (self.normalize is None) != (self.reference is None):
            raise InputError("--normalize and --reference go together: give both or neither")
        return self

    @property
    def selection(self) -> str:
        """The effective ``select`` (see the field's comment for the defaults)."""
        if self.select is not None:
            return self.select
        if self.self_train_rounds:  # the source split says nothing about the pseudo-labels
            return "last"
        return {"sda": "target", "uda": "last"}.get(self.mode, "source")

    def total_epochs(self) -> int:
        return len(self.phases())

    def phases(self) -> list[str]:
        """The phase of every epoch, in order (see :mod:`stainadapt.schedule`)."""
        return epoch_phases(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _check_type(key: str, value: Any, where: str) -> Any:
    default = TrainConfig()
    expected = getattr(default, key)
    annotation = str(_FIELDS[key].type)
    if value is None:
        if "None" in annotation:
            return None
        raise InputError(f"{where}: {key} cannot be empty")
    if key == "discs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: discs must be a list of plugin specs (strings)")
        return list(value)
    if isinstance(expected, bool):
        if not isinstance(value, bool):
            raise InputError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(expected, int) and not isinstance(expected, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if isinstance(expected, float) or (expected is None and "float" in annotation):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key} must be a string, got {value!r}")
    return value


#: Keys older config.toml files use for a field under its present name.
RENAMED = {"encoder_lr_scale": "encoder_lr_mult"}


def _check_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in RENAMED:
            if RENAMED[key] in data:
                raise InputError(f"{where}: {key} and {RENAMED[key]} are the same setting "
                                 f"(its old and new name); give {RENAMED[key]} only")
            key = RENAMED[key]
        if key not in _FIELDS:
            valid = ", ".join(sorted(_FIELDS))
            raise InputError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        out[key] = _check_type(key, value, where)
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict of checked fields (keys may live under ``[train]``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    return _check_keys(data, str(path))


def resolve_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> TrainConfig:
    """``defaults`` (a recipe's fields), then file values, then flags; validated.

    ``None`` flags are "not given". ``steps`` and ``pretrain_epochs`` say the same thing
    twice: one layer may give both only if they agree (a run's own config.toml does). In a
    run without discriminators ``steps`` is the whole budget: ``adv_epochs``, which such
    a run spends on more segmentation epochs, is 0 unless some layer gives it.
    """
    values: dict[str, Any] = dict(_check_keys(defaults or {}, "recipe"))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for where, layer in ((str(config_file), load_toml(config_file) if config_file else {}),
                         ("command line", _check_keys(given, "command line"))):
        if layer.get("steps") and "pretrain_epochs" in layer:
            per_epoch = layer.get("steps_per_epoch", values.get("steps_per_epoch", 0))
            if layer["pretrain_epochs"] * per_epoch != layer["steps"]:
                raise InputError(f"{where}: steps {layer['steps']} and pretrain_epochs "
                                 f"{layer['pretrain_epochs']} disagree (steps = "
                                 "pretrain_epochs x steps_per_epoch); give one of them")
        if "pretrain_epochs" in layer:  # epochs given here replace a recipe's steps
            values["steps"] = 0
        values.update(layer)
    config = TrainConfig(**values)
    if config.steps and "adv_epochs" not in values and (
            config.mode == "source-only" or not config.discs):
        # without discriminators the adversarial epochs are plain segmentation epochs:
        # --steps alone is then the whole budget, as it reads
        config.adv_epochs = 0
    return config.validate()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                   .replace("\t", "\\t"))
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(config: TrainConfig | dict[str, Any]) -> str:
    """A flat TOML document of the config's fields (``None`` fields are omitted)."""
    data = config.as_dict() if isinstance(config, TrainConfig) else config
    lines = ["# stainadapt training run (resolved configuration)"]
    for key, value in data.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
