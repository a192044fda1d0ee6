"""The rows of the paper's Tables 1 and 2, its numbers and its claims.

``METHODS``: one row per method (id, paper name, mode, which stain G is trained on,
schedule, which run G starts from, discriminator spec templates, extra config fields, the
normaliser applied at test time). Discriminator weights are not written per method: the
templates read them from the recipe (``{alpha_e}`` etc., ``stainadapt.recipes``).
``PAPER``: the paper's numbers (Dice and accuracy in %). ``CLAIMS``: the orderings the
paper claims. ``benchmarks/paper_table.py`` runs the rows; ``paper_render.py`` writes the
table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stainadapt.recipes import MIRRORED, SHAPE, Recipe

__all__ = ["SCHEDULES", "SOURCE", "Method", "METHODS", "BY_ID", "PAPER", "CLAIMS",
           "PAPER_GAP", "fmt", "disc_specs", "schedule_epochs"]

# How many epochs of which phase a trained row gets (``build_config``). Why these: the
# adapted rows continue the shared source G, so they and source-only-longer give G the
# same ``adv`` further updates; the rows trained from scratch that no adaptation is
# compared with keep the number of G updates they are compared at (see METHODS).
SCHEDULES = {
    "s0": "s0 epochs on L_seg, from scratch",
    "s0+adv": "s0 + adv epochs on L_seg, from scratch",
    "adv": "adv epochs on L_seg, continuing the init run's G",
    "d0+adv": "d0 epochs of D alone, then adv adversarial epochs, continuing the init "
              "run's G",
    "st": "self_train_rounds rounds of self_train_epochs epochs on L_seg over PASM labels "
          "and Masson pseudo-labels, continuing the init run's G",
}
SOURCE = "source-only"  # the row whose model is the shared source G of its seed


@dataclass(frozen=True)
class Method:
    id: str
    paper: str  # the paper's name for it
    tables: str  # "1", "2" or "12"
    trained_on: str  # the paper's "Training Set" column
    mode: str  # TrainConfig.mode; "eval" = no training, evaluate `base`'s model
    source: str = "S"  # the labelled domain G is trained on: S (PASM) or T (Masson)
    discs: tuple[str, ...] = ()  # spec templates, formatted with the recipe's fields
    extra: dict[str, str] = field(default_factory=dict)  # TrainConfig field -> template
    normalizer: str | None = None  # applied to every test image (fitted on a PASM image)
    base: str | None = None  # the run whose model an "eval" row evaluates
    schedule: str = ""  # a key of SCHEDULES ("" for eval rows)
    init: str | None = None  # the row (same seed) whose model G starts from

    @property
    def depends_on(self) -> str | None:
        """The row that must have a result before this one runs (same seed)."""
        return self.base or self.init


JITTER = {"stain_jitter": "{stain_jitter}"}
UDA = "P & M (unsupervised)"


SDA_SELECT = {"select": "last"}


def _adapt(id: str, paper: str, tables: str, trained_on: str, mode: str,
           discs: tuple[str, ...], **kw: Any) -> Method:
    """A row with discriminators: the paper's d0 + adv epochs on the shared source G."""
    return Method(id, paper, tables, trained_on, mode, discs=discs, schedule="d0+adv",
                  init=SOURCE, **kw)


METHODS: tuple[Method, ...] = (
    # ---- Table 1 (supervised DA) and the bounds of Table 2
    # The shared source G of the seed: s0 epochs on PASM; every row with a discriminator
    # and source-only-longer start from it, the eval rows evaluate it.
    Method(SOURCE, "Origin", "12", "PASM", "source-only", schedule="s0"),
    # The rows below train from scratch: target-only and st-scratch keep s0 + adv epochs
    # (st-scratch is compared with sda-s/sda-sed, which give G s0 + adv updates too).
    Method("target-only", "Origin", "12", "Masson", "source-only", source="T",
           schedule="s0+adv"),
    # Supervised DA keeps its last epoch (SDA_SELECT): it trains on Masson labels, and
    # selecting on PASM validation alone picked SDA-sed's epoch 3 of 14 (Masson Dice
    # 0.40; 0.92 at the end) because adapting to Masson costs PASM Dice; selecting on
    # Masson validation would select on the table's test images.
    Method("st-scratch", "From scratch", "1", "P & M", "sda",  # S and T labels, no D
           schedule="s0+adv", extra=SDA_SELECT),
    _adapt("sda-s", "SDA-s", "1", "P & M", "sda", (SHAPE,), extra=SDA_SELECT),
    _adapt("sda-sed", "SDA-sed", "12", "P & M", "sda", (MIRRORED, SHAPE), extra=SDA_SELECT),
    # ---- Table 2 (unsupervised DA, tested on T): baselines outside the paper
    Method("macenko", "Origin + Macenko (T -> S)", "2", "PASM", "eval",
           normalizer="macenko", base=SOURCE),
    Method("reinhard", "Origin + Reinhard (T -> S)", "2", "PASM", "eval",
           normalizer="reinhard", base=SOURCE),
    Method("vahadane", "Origin + Vahadane (T -> S)", "2", "PASM", "eval",
           normalizer="vahadane", base=SOURCE),
    # s0 epochs from scratch, like source-only: the effect of the augmentation alone
    Method("source-only-jitter", "Origin + stain augmentation", "2", "PASM", "source-only",
           extra=JITTER, schedule="s0"),
    # The shared source G trained adv more epochs on L_seg alone: as many G updates as
    # the adapted rows, the baseline that isolates "adapted" from "trained longer".
    Method("source-only-longer", "Origin, s0 + adv epochs", "2", "PASM", "source-only",
           schedule="adv", init=SOURCE),
    # ---- Table 2: the paper's adversarial rows
    _adapt("sf-4", "SF-4", "2", UDA, "uda", ("single:layer=f4,weight={alpha_single}",)),
    _adapt("sf-9", "SF-9", "2", UDA, "uda", ("single:layer=f9,weight={alpha_single}",)),
    _adapt("afc", "AFC", "2", UDA, "uda", ("concat:weight={alpha_concat}",)),
    _adapt("uda-s", "UDA-s", "2", UDA, "uda", (SHAPE,)),
    _adapt("uda-e", "UDA-e", "2", UDA, "uda",
           ("mirrored:side=encoder,weight_encoder={alpha_e}",)),
    _adapt("uda-d", "UDA-d", "2", UDA, "uda",
           ("mirrored:side=decoder,weight_decoder={alpha_d}",)),
    _adapt("uda-ed", "UDA-ed", "2", UDA, "uda", (MIRRORED,)),
    _adapt("uda-sed", "ours (UDA-sed)", "2", UDA, "uda", (MIRRORED, SHAPE)),
    _adapt("uda-sed-jitter", "ours + stain augmentation", "2", UDA, "uda",
           (MIRRORED, SHAPE), extra=JITTER),
    # Control (not a paper row): uda-sed with every weight 0. Target batches still pass
    # through G's BatchNorm and the discriminators still train, but no adversarial
    # gradient reaches G: it separates the discriminators' effect from the effect of
    # training on target batches.
    _adapt("uda-sed-zero", "ours, α = 0 (control)", "2", UDA, "uda",
           ("mirrored:weight_encoder=0,weight_decoder=0", "shape:weight=0")),
    # ---- Not in the paper: self-training (``--self-train-rounds``). Each round G's model
    # labels the Masson training split (never its masks) and G trains on PASM labels +
    # those pseudo-labels. From the shared source G, and from UDA-sed's model: the same
    # as one `train --mode uda --disc ... --self-train-rounds R` run, split in two so
    # that the UDA-sed run is shared. Mode source-only = no discriminator in these epochs.
    Method("self-training", "Origin + self-training (not in the paper)", "2",
           "PASM + Masson pseudo-labels", "source-only", schedule="st", init=SOURCE),
    Method("uda-sed-st", "ours (UDA-sed) + self-training (not in the paper)", "2",
           UDA, "source-only", schedule="st", init="uda-sed"),
    # Control: self-training from source-only-longer, a G trained as many steps as
    # UDA-sed's but with no adversarial term. Against uda-sed-st it isolates what the
    # adversarial stage adds as a starting point for self-training.
    Method("longer-st", "Origin, s0 + adv epochs, + self-training (control)", "2",
           "PASM + Masson pseudo-labels", "source-only", schedule="st",
           init="source-only-longer"),
)
BY_ID = {m.id: m for m in METHODS}

# The paper's numbers in %: (DC, DC std, Acc, Acc std) tested on S (PASM) / T (Masson).
PAPER: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "source-only": {"S": (93.22, 0.25, 96.36, 0.14), "T": (78.64, 0.47, 94.39, 0.26)},
    "target-only": {"S": (82.31, 0.31, 91.29, 0.21), "T": (86.60, 0.41, 96.22, 0.13)},
    "st-scratch": {"S": (91.30, 0.08, 95.82, 0.06), "T": (87.08, 0.26, 96.38, 0.12)},
    "sda-s": {"S": (93.70, 0.16, 96.79, 0.07), "T": (90.10, 0.08, 97.15, 0.05)},
    "sda-sed": {"S": (94.07, 0.15, 96.99, 0.08), "T": (90.49, 0.34, 97.34, 0.13)},
    "sf-4": {"T": (83.82, 0.44, 94.52, 0.16)},
    "sf-9": {"T": (84.95, 0.34, 94.85, 0.09)},
    "afc": {"T": (85.34, 0.40, 94.91, 0.14)},
    "uda-s": {"T": (84.27, 0.34, 94.62, 0.12)},
    "uda-e": {"T": (83.97, 0.37, 94.49, 0.10)},
    "uda-d": {"T": (85.76, 0.22, 93.22, 0.06)},
    "uda-ed": {"T": (87.36, 0.21, 95.54, 0.10)},
    "uda-sed": {"T": (87.73, 0.15, 95.59, 0.06)},
}

# The paper's claims: (lower, higher, tested on, relation, where it is said).
CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("source-only", "sf-4", "T", "<", "the paper's ordering / Table 2"),
    ("source-only", "sf-9", "T", "<", "the paper's ordering / Table 2"),
    ("sf-4", "afc", "T", "<", "the paper's ordering / Table 2"),
    ("sf-9", "afc", "T", "<", "the paper's ordering / Table 2"),
    ("afc", "uda-ed", "T", "<", "the paper's ordering; 'UDA-ed better than AFC'"),
    ("uda-ed", "uda-sed", "T", "<", "the paper's ordering / Table 2"),
    ("uda-sed", "sda-sed", "T", "<=", "the paper's ordering: SDA-sed is the upper bound"),
    ("sf-4", "uda-e", "T", "<", "'UDA-e better than SF-4'"),
    ("sf-9", "uda-d", "T", "<", "'UDA-d better than SF-9'"),
    ("source-only", "target-only", "T", "<", "Table 1: training on S alone degrades on T"),
    ("target-only", "source-only", "S", "<", "Table 1: training on T alone degrades on S"),
    ("st-scratch", "sda-s", "T", "<", "Table 1: 'adding Ds significantly improves'"),
    ("sda-s", "sda-sed", "T", "<", "Table 1: 'adding De and Dd further improves'"),
    ("sda-s", "sda-sed", "S", "<", "Table 1: ... 'on both S and T'"),
    ("source-only", "sda-sed", "S", "<=", "Table 1: 'without losing accuracy on S'"),
)
PAPER_GAP = (87.73 - 78.64) / (90.49 - 78.64)  # 76.7 %, "77 %"


def fmt(template: str, budget: Recipe) -> str:
    return budget.format(template)


def disc_specs(method: Method, budget: Recipe) -> list[str]:
    return [fmt(t, budget) for t in method.discs]


def schedule_epochs(method: Method, budget: Recipe) -> dict[str, int]:
    """``pretrain_epochs``/``disc_epochs``/``adv_epochs`` of a trained row (its schedule).

    In ``source-only`` mode and in ``sda`` without a discriminator every epoch is a seg
    epoch (``stainadapt/schedule.py``), so only their sum counts there.
    """
    s0, d0, adv = budget.pretrain_epochs, budget.disc_epochs, budget.adv_epochs
    return {
        "s0": {"pretrain_epochs": s0, "disc_epochs": 0, "adv_epochs": 0},
        "s0+adv": {"pretrain_epochs": s0, "disc_epochs": 0, "adv_epochs": adv},
        "adv": {"pretrain_epochs": adv, "disc_epochs": 0, "adv_epochs": 0},
        "d0+adv": {"pretrain_epochs": 0, "disc_epochs": d0, "adv_epochs": adv},
        "st": {"pretrain_epochs": 0, "disc_epochs": 0, "adv_epochs": 0,
               "self_train_rounds": budget.self_train_rounds,
               "self_train_epochs": budget.self_train_epochs},
    }[method.schedule]
