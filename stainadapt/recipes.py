"""Named training recipes: the budgets the demo, the docs and the benchmarks share.

A :class:`Recipe` is a named set of ``TrainConfig`` fields (backbone, sizes, the s0/d0/adv
schedule, learning rates, loss weights, selection) plus the budget around the runs (data
size, seeds, the demo's test draw). :meth:`Recipe.config` turns one into the
``TrainConfig`` of a run (mode, discriminators, seed, folder, overrides), so every caller
builds its configs the same way.

* ``DEMO``: ``stainadapt demo`` (about 10 minutes on 2 CPU cores);
* ``DEMO_QUICK``: ``stainadapt demo --quick`` (well under a minute, for CI);
* ``PAPER_QUICK``: ``benchmarks/paper_table.py --budget quick``: ``DEMO`` as it is, on the
  table's data set, so the table measures what the demo measures;
* ``PAPER_FULL``: the table on a GPU (resnet34, 256 px crops, its own schedule);
* ``PAPER_TINY``: the table's tests (seconds per run).

``get(name)`` looks one up by name; ``RECIPES`` holds them all.

Training recipes (:data:`TRAINING`) are what ``stainadapt train --recipe NAME`` starts
from before a config file and flags: ``paper`` is ``TrainConfig``'s own defaults (the
paper's schedule, Adam at a constant 1e-3, BCE, uniform crops, light augmentation);
``real`` is the small-data recipe for tens of real tiles (:data:`DEFAULT_TRAINING`).
:func:`training_config` resolves one, as the command line does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, load_toml, resolve_config
from .errors import InputError

__all__ = ["TRAINING", "DEFAULT_TRAINING", "training_fields", "training_config",
           "Recipe", "RECIPES", "DEMO", "DEMO_QUICK", "PAPER_QUICK", "PAPER_FULL",
           "PAPER_TINY", "get", "MIRRORED", "SHAPE"]

#: Discriminator spec templates, formatted with a recipe's fields (``alpha_*``).
MIRRORED = "mirrored:weight_encoder={alpha_e},weight_decoder={alpha_d}"
SHAPE = "shape:weight={alpha_s}"


@dataclass(frozen=True)
class Recipe:
    """Every number of one training recipe; ``None`` leaves ``TrainConfig``'s default."""

    name: str
    # ---- TrainConfig fields shared by every run of the recipe
    backbone: str = "resnet18"
    image_size: int = 96
    batch_size: int = 4
    # The schedule: s0 = G on S alone, d0 = discriminators alone, adv = alternating epochs.
    pretrain_epochs: int = 25  # s0
    disc_epochs: int = 2  # d0
    adv_epochs: int = 12  # adv
    steps_per_epoch: int = 10  # 0: len(source train) // batch_size
    # G's adversarial term where it has one: "flip" (non-saturating) or "minimax"
    adv_loss: str = "flip"
    lr: float = 3e-4
    disc_lr: float = 1e-4
    dice_weight: float = 1.0
    ema: float = 0.95  # moving average of G's weights, validated, selected and saved
    # The same rule for every run, no target labels: the Masson validation split stays a
    # clean test set. With acquisition jitter the PASM validation Dice saturates within a
    # few epochs while the Masson Dice keeps rising, so "source" picks an early epoch.
    select: str = "last"
    augment: bool | None = None
    val_fraction: float | None = None
    amp: str | None = None
    samples: int | None = None  # overlays per domain in each run's samples/
    # ---- discriminator weights: the UDA specs (:attr:`uda_discs`) and the table's rows
    alpha_e: float = 0.01  # De (mirrored, encoder side)
    alpha_d: float = 0.05  # Dd (mirrored, decoder side)
    alpha_s: float = 0.1  # Ds (shape)
    alpha_single: float = 0.01  # single-layer discriminators (SF-4, SF-9)
    alpha_concat: float = 0.01  # concatenated features (AFC)
    stain_jitter: float = 0.2  # strength of the runs "with stain augmentation"
    # self-training after UDA: rounds of pseudo-labelling the Masson training split
    self_train_rounds: int = 2
    self_train_epochs: int = 12
    # ---- budget around the runs
    seed: int = 0  # the demo's seed
    seeds: int = 1  # the table's default number of seeds (0..seeds-1)
    data_n: int | None = None  # synthetic tiles per stain; None: the cached default set
    data_size: int | None = None  # tile side; None: the cached default
    data_seed: int = 0
    # the demo's second synthetic draw (data seed + 1), never seen in training or selection
    test_n: int = 64

    def format(self, template: str) -> str:
        """``template`` with this recipe's fields, e.g. ``SHAPE`` -> ``"shape:weight=0.1"``."""
        return template.format(**{k: getattr(self, k) for k in self.__dataclass_fields__})

    @property
    def uda_discs(self) -> tuple[str, ...]:
        """The UDA discriminators: mirrored (De + Dd) and shape (Ds) at this recipe's weights."""
        return (self.format(MIRRORED), self.format(SHAPE))

    def config(self, mode: str, *, source: str, target: str | None, out: str,
               seed: int | None = None, discs: tuple[str, ...] | list[str] = (),
               device: str = "auto", **overrides: Any) -> TrainConfig:
        """The ``TrainConfig`` of one run of this recipe (not validated).

        ``seed`` defaults to the recipe's. ``disc_lr`` and ``adv_loss`` are set only where
        the run has discriminators (elsewhere they change nothing). ``overrides`` are
        ``TrainConfig`` fields, e.g. the phase's epochs, ``init`` or the self-training
        rounds (which no run gets unless asked for).
        """
        values: dict[str, Any] = dict(
            source=source, target=target, out=out, mode=mode, discs=list(discs),
            backbone=self.backbone, image_size=self.image_size, batch_size=self.batch_size,
            pretrain_epochs=self.pretrain_epochs, disc_epochs=self.disc_epochs,
            adv_epochs=self.adv_epochs, steps_per_epoch=self.steps_per_epoch, lr=self.lr,
            dice_weight=self.dice_weight, ema=self.ema, select=self.select,
            seed=self.seed if seed is None else seed, device=device)
        for key in ("augment", "val_fraction", "amp", "samples"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        if discs:
            values.update(disc_lr=self.disc_lr, adv_loss=self.adv_loss)
        values.update(overrides)
        return TrainConfig(**values)


DEMO = Recipe(name="demo")
DEMO_QUICK = Recipe(name="demo-quick", image_size=64, batch_size=2, pretrain_epochs=1,
                    disc_epochs=1, adv_epochs=1, steps_per_epoch=2, disc_lr=1e-3, data_n=10,
                    data_size=128, test_n=4, self_train_rounds=1, self_train_epochs=1)
# The table's fields that the demo leaves at TrainConfig's defaults, and its data set.
_TABLE = dict(augment=True, val_fraction=0.2, amp="auto", samples=2, data_n=48,
              data_size=256, seeds=1)
PAPER_QUICK = replace(DEMO, name="paper-quick", **_TABLE)
# For a GPU: resnet34, 256 px crops of 100 tiles of 512 px per stain, the paper's schedule
# (s0 50, d0 10, adv 100) scaled by 0.4, len(S train) // 4 = 20 steps an epoch.
PAPER_FULL = replace(PAPER_QUICK, name="paper-full", backbone="resnet34", image_size=256,
                     pretrain_epochs=20, disc_epochs=4, adv_epochs=40, steps_per_epoch=0,
                     data_n=100, data_size=512, seeds=3)
PAPER_TINY = Recipe(name="paper-tiny", image_size=64, batch_size=2, pretrain_epochs=1,
                    disc_epochs=1, adv_epochs=1, steps_per_epoch=1, select="source",
                    self_train_epochs=1, **{**_TABLE, "samples": 0, "data_n": 6,
                                            "data_size": 64})

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEMO, DEMO_QUICK, PAPER_QUICK, PAPER_FULL,
                                                  PAPER_TINY)}


def get(name: str) -> Recipe:
    """The recipe called ``name`` (a key of :data:`RECIPES`)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"no recipe {name!r}; known: {', '.join(RECIPES)}") from None


#: Training recipes: ``TrainConfig`` fields a run starts from. Figures behind ``real``:
#: benchmarks/RESULTS.md, "Real tissue"; what was tried: docs/experiments.md.
TRAINING: dict[str, dict[str, Any]] = {
    "paper": {"recipe": "paper"},
    "real": {
        "recipe": "real",
        "dice_weight": 1.0,  # Dice + BCE: glomeruli are 0-15 % of a tile
        "lr_schedule": "cosine",
        "warmup_steps": 30,
        "foreground_share": 0.5,
        # every image normalised by its own statistics: running BatchNorm statistics of
        # one biopsy's tiles do not fit another's (docs/experiments.md)
        "norm": "instance",
        # tiles seen at half size in 128 px crops: a crop holds a whole glomerulus of a
        # ~1 um/px tile with its surroundings (0.530 over 2 seeds against 0.466 Dice over
        # 4 folds of real PAS tiles, at a fifth of the cost; benchmarks/RESULTS.md)
        "downsample": 2.0,
        "image_size": 128,
        # validate, select and save a moving average of G's weights (a ~100-step
        # horizon): the same Dice on the folds, and a validation curve that no longer
        # swings from epoch to epoch on a few tiles (docs/experiments.md)
        "ema": 0.99,
    },
}
DEFAULT_TRAINING = "real"


def training_fields(name: str) -> dict[str, Any]:
    """The fields of training recipe ``name`` (an :class:`InputError` lists the known ones)."""
    if name not in TRAINING:
        raise InputError(f"unknown recipe {name!r}; known: {', '.join(TRAINING)}")
    return dict(TRAINING[name])


def training_config(recipe: str | None = None, config_file: str | Path | None = None,
                    overrides: dict[str, Any] | None = None, **fields: Any) -> TrainConfig:
    """A validated ``TrainConfig``: recipe fields, then the config file, then the fields given.

    The recipe is ``recipe``, else the file's ``recipe`` key, else :data:`DEFAULT_TRAINING`.
    ``overrides`` (flag values, ``None`` meaning "not given", as ``stainadapt train``) and
    ``fields`` are ``TrainConfig`` fields, e.g.
    ``training_config(source="data/pasm", mode="source-only", out="runs/a")``.
    """
    overrides = {**(overrides or {}), **fields}
    name = recipe
    if name is None and config_file is not None:
        name = load_toml(config_file).get("recipe")
    name = name or DEFAULT_TRAINING
    flags = {**(overrides or {}), "recipe": name}
    return resolve_config(config_file, flags, defaults=training_fields(name))
