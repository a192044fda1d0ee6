"""Reproduce the paper's Tables 1 and 2 on the synthetic stains (issue 11).

    python benchmarks/paper_table.py --quick                 # ~30 min on 2 CPU cores, 1 seed
    python benchmarks/paper_table.py --quick --jobs 1        # one run at a time (~55 min)
    python benchmarks/paper_table.py --seeds 3               # FULL budget (meant for a GPU)
    python benchmarks/paper_table.py --quick --only source-only,uda-sed --set alpha_e=0.03
    python benchmarks/paper_table.py --quick --render-only   # tables + chart from the JSONs
    python benchmarks/paper_table.py --list                  # every method's exact config

S = synthetic PASM, T = synthetic Masson, generated once per data spec with the public
``stainadapt synth`` command into ``OUT/data-...``. Every method is trained through the
library API (``stainadapt.engine.trainer.train``, the same call as ``stainadapt train``)
and evaluated like ``stainadapt demo`` does: the model the run selected is applied to the
whole held-out images of the trainer's own validation splits (S: split seed ``seed``,
T: ``seed + 1``; same seed => same split for every method) with
``engine.evaluation.evaluate_model``. Same seed => every run trained from scratch starts
from the same G weights.

The paper's schedule, as the demo runs it: G on S alone for s0 epochs, then the
discriminators alone for d0 epochs, then ``adv`` alternating epochs. Per seed the
``source-only`` row ("Origin" on PASM, s0 epochs) *is* that first stage: it is trained
once, first, and every row with a discriminator (SF-4/9, AFC, UDA-*, SDA-*, the
alpha = 0 control ``uda-sed-zero``) starts from its model (``TrainConfig.init``) with
``pretrain_epochs = 0``, d0 D epochs and ``adv`` adversarial epochs. ``source-only-longer``
trains the same G ``adv`` more epochs on L_seg alone: as many G updates as the adapted
rows, so "UDA beats source-only" cannot just mean "UDA trained longer". The rows that are
not adaptations train from scratch: ``source-only-jitter`` s0 epochs (like source-only),
``target-only`` and ``st-scratch`` s0 + adv epochs. ``Method.schedule`` and
``Method.init`` say which row gets what; the rendered method table repeats it.

What is where:

* ``METHODS``: one row per method of the paper's tables (id, paper name, mode, which stain
  G is trained on, schedule, which run G starts from, discriminator spec templates, extra
  config fields, the normaliser applied at test time). Discriminator weights are NOT
  written per method: the templates read them from the :class:`Budget` (``{alpha_e}``
  etc.).
* :class:`Budget`, ``QUICK``, ``FULL``, ``TINY``: every number of the training recipe.
  ``QUICK`` is ``stainadapt.engine.demo.FULL`` (the tuned demo recipe: schedule s0/d0/adv,
  steps per epoch, lr, D lr, Dice weight, G's adversarial loss form, selection,
  discriminator weights) so one tuning of the demo flows into the table; ``FULL`` takes
  the demo's recipe but its own, GPU-sized schedule; ``--set KEY=VALUE`` overrides any
  field for one invocation.
* ``PAPER``: the paper's numbers (Tables 1 and 2, Dice and accuracy in %).
* ``CLAIMS``: the orderings the paper claims; the Markdown lists which ones ours break.

Robustness: every finished run writes ``OUT/results/<id>-seed<k>.json`` at once, with a
unique ``uid``; a run whose JSON exists with the same configuration is skipped, so an
interrupted invocation continues where it stopped (a half-trained run folder with the same
config and the same starting run is resumed from its last epoch). A JSON whose
configuration differs from the current one (budget changed) is stale: that run is trained
again. A run that starts from another (``init``) or evaluates another (``base``) records
that run's ``uid``; when the source-only run is trained again, every run depending on it
is stale too. Dependencies run first and ``--only`` adds them (``--only uda-sed`` trains
``source-only`` first if its result is missing or stale). A failed run writes a JSON with
its error and is retried next time; a run whose dependency failed fails without training.
The Markdown and the PNG are rendered from the JSONs only, so ``--render-only`` rebuilds
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MD = REPO / "benchmarks" / "PAPER_TABLE.md"

# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """Every number of the recipe shared by all methods (one place to tune)."""

    name: str = "custom"
    backbone: str = "resnet18"
    image_size: int = 96
    batch_size: int = 4
    # The schedule (see Method.schedule for which row gets what): s0 = G on S alone (the
    # shared source G), d0 = discriminators alone, adv = alternating epochs.
    pretrain_epochs: int = 25  # s0
    disc_epochs: int = 2  # d0
    adv_epochs: int = 12
    steps_per_epoch: int = 10  # 0: len(source train) // batch_size
    # G's adversarial term in the rows with discriminators: "flip" (non-saturating, the
    # demo's) or "minimax" (the paper's Eq. 4 as written); see stainadapt/engine/losses.py
    adv_loss: str = "flip"
    lr: float = 3e-4
    disc_lr: float = 1e-4
    dice_weight: float = 1.0
    ema: float = 0.95  # moving average of G's weights, validated and saved (0: off)
    # Model selection for EVERY run. "source" (or "last") keeps the Masson validation split
    # a clean test set; "target" would select on the very images the table reports.
    select: str = "source"
    alpha_e: float = 0.01  # De (mirrored encoder side)
    alpha_d: float = 0.05  # Dd (mirrored decoder side)
    alpha_s: float = 0.1  # Ds (shape)
    alpha_single: float = 0.01  # SF-4 and SF-9
    alpha_concat: float = 0.01  # AFC
    stain_jitter: float = 0.2  # strength of the "+ stain augmentation" rows (0.2 = "strong")
    # the self-training rows (not in the paper): rounds of pseudo-labelling the Masson
    # training split, epochs per round (benchmarks/RESULTS.md measured 2 x 12 on 4 seeds)
    self_train_rounds: int = 2
    self_train_epochs: int = 12
    augment: bool = True
    val_fraction: float = 0.2
    amp: str = "auto"
    samples: int = 2  # overlays per domain in each run's samples/
    seeds: int = 1  # default number of seeds (0..seeds-1); --seeds overrides
    data_n: int = 48  # synthetic tiles per stain
    data_size: int = 256  # tile side
    data_seed: int = 0

    @classmethod
    def from_demo(cls, demo: Any, name: str, **overrides: Any) -> Budget:
        """The demo's recipe (``stainadapt.engine.demo.DemoBudget``) as a table budget.

        Copies backbone, sizes, schedule, learning rates, Dice weight, G's adversarial loss
        form (``adv_loss``) and selection, and
        reads ``alpha_e``/``alpha_d``/``alpha_s`` out of the demo's discriminator specs
        (plugin defaults where a spec gives no weight). SF and AFC weights default to the
        encoder weight (the paper gives none; the plugins' own default is 0.01 = alpha_e).
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name != "name" and hasattr(demo, f.name):
                values[f.name] = getattr(demo, f.name)
        values.update(_alphas_from_specs(getattr(demo, "discs", ())))
        values.setdefault("alpha_single", values.get("alpha_e", cls.alpha_e))
        values.setdefault("alpha_concat", values.get("alpha_e", cls.alpha_e))
        values.pop("seed", None)
        values = {k: v for k, v in values.items() if v is not None}
        values.update(overrides)
        return cls(name=name, **values)


def _alphas_from_specs(specs: Sequence[str]) -> dict[str, float]:
    from stainadapt.registry import get_factory, parse_spec, plugin_options

    out: dict[str, float] = {}
    for spec in specs:
        name, opts = parse_spec(spec)
        if name not in ("mirrored", "shape"):
            continue
        try:
            defaults = plugin_options(get_factory("discriminators", name), 1)
        except Exception:  # noqa: BLE001 - a broken plugin: keep the Budget defaults
            defaults = {}
        merged = {**defaults, **opts}
        if name == "mirrored":
            side = merged.get("side", "both")
            if side in ("both", "encoder") and "weight_encoder" in merged:
                out["alpha_e"] = float(merged["weight_encoder"])
            if side in ("both", "decoder") and "weight_decoder" in merged:
                out["alpha_d"] = float(merged["weight_decoder"])
        elif "weight" in merged:
            out["alpha_s"] = float(merged["weight"])
    return out


def _demo_recipe() -> Any:
    from stainadapt.engine import demo

    return demo.FULL


# The lead tunes the recipe in stainadapt/engine/demo.py (demo.FULL) or here; `--set`
# overrides one invocation. QUICK is demo.FULL as it is (s0 25, d0 2, adv 12 epochs of 10
# steps, flip loss) so the table measures what the demo measures: 17 trained runs, 29 min
# on 2 CPU cores with two at a time (the source G once, then 12 adaptations of 14 epochs).
QUICK = Budget.from_demo(_demo_recipe(), "quick", seeds=1)
# FULL: for a GPU. resnet34, 256 px crops of 100 tiles of 512 px per stain, the paper's
# schedule (s0 50, d0 10, adv 100) scaled by 0.4, len(S train) // 4 = 20 steps an epoch.
FULL = Budget.from_demo(_demo_recipe(), "full", backbone="resnet34", image_size=256,
                        batch_size=4, pretrain_epochs=20, disc_epochs=4, adv_epochs=40,
                        steps_per_epoch=0, data_n=100, data_size=512, seeds=3)
# TINY: for the test only (seconds per run).
TINY = Budget(name="tiny", backbone="resnet18", image_size=64, batch_size=2,
              pretrain_epochs=1, disc_epochs=1, adv_epochs=1, steps_per_epoch=1,
              lr=QUICK.lr, disc_lr=QUICK.disc_lr, samples=0, seeds=1, data_n=6, data_size=64,
              self_train_rounds=2, self_train_epochs=1)
BUDGETS = {"tiny": TINY, "quick": QUICK, "full": FULL}

# --------------------------------------------------------------------------- methods


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
    discs: tuple[str, ...] = ()  # spec templates, formatted with the Budget's fields
    extra: dict[str, str] = field(default_factory=dict)  # TrainConfig field -> template
    normalizer: str | None = None  # applied to every test image (fitted on a PASM image)
    base: str | None = None  # the run whose model an "eval" row evaluates
    schedule: str = ""  # a key of SCHEDULES ("" for eval rows)
    init: str | None = None  # the row (same seed) whose model G starts from

    @property
    def depends_on(self) -> str | None:
        """The row that must have a result before this one runs (same seed)."""
        return self.base or self.init


MIRRORED = "mirrored:weight_encoder={alpha_e},weight_decoder={alpha_d}"
SHAPE = "shape:weight={alpha_s}"
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
    ("source-only", "sf-4", "T", "<", "issue ordering / Table 2"),
    ("source-only", "sf-9", "T", "<", "issue ordering / Table 2"),
    ("sf-4", "afc", "T", "<", "issue ordering / Table 2"),
    ("sf-9", "afc", "T", "<", "issue ordering / Table 2"),
    ("afc", "uda-ed", "T", "<", "issue ordering; 'UDA-ed better than AFC'"),
    ("uda-ed", "uda-sed", "T", "<", "issue ordering / Table 2"),
    ("uda-sed", "sda-sed", "T", "<=", "issue ordering: SDA-sed is the upper bound"),
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

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    root: Path
    S: Path
    T: Path
    command: str


def ensure_data(budget: Budget, out: Path) -> Data:
    """The synthetic PASM and Masson sets, made once with ``stainadapt synth``."""
    root = out / f"data-n{budget.data_n}-s{budget.data_size}-seed{budget.data_seed}"
    args = ["synth", "--stain", "pasm", "--stain", "masson", "-n", str(budget.data_n),
            "--size", str(budget.data_size), "--seed", str(budget.data_seed)]
    command = "stainadapt " + shlex.join([args[0], str(root), *args[1:]])
    if not (root / "README.txt").is_file():
        tmp = root.with_name(root.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"generating the data: {command}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "stainadapt", args[0], str(tmp), *args[1:]],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "README.txt").is_file():
            raise SystemExit(f"stainadapt synth failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
        os.replace(tmp, root)
    return Data(root, root / "pasm", root / "masson", command)


def target_train_folder(data: Data, seed: int, val_fraction: float) -> Path:
    """Masson's training split of ``seed`` as a domain folder (links), for "trained on T".

    The trainer holds Masson out with split seed ``seed + 1`` when Masson is the target;
    trained on Masson as its *source* it would split with ``seed`` and could train on the
    held-out test images. This folder holds only the training split of ``seed + 1``.
    """
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.splits import split_samples

    folder = data.root / f"masson-train-split{seed + 1}-val{val_fraction:g}"
    if (folder / "DONE").is_file():
        return folder
    train, _ = split_samples(scan_domain(data.T, require_masks=True), val_fraction, seed + 1)
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for s in train:
        for src, sub in ((s.image, "images"), (s.mask, "masks")):
            dst = folder / sub / Path(src).name
            try:
                os.symlink(Path(src).resolve(), dst)
            except OSError:
                shutil.copyfile(src, dst)
    (folder / "DONE").write_text("\n".join(s.name for s in train) + "\n")
    return folder


# --------------------------------------------------------------------------- configs


def _fmt(template: str, budget: Budget) -> str:
    return template.format(**asdict(budget))


def disc_specs(method: Method, budget: Budget) -> list[str]:
    return [_fmt(t, budget) for t in method.discs]


def schedule_epochs(method: Method, budget: Budget) -> dict[str, int]:
    """``pretrain_epochs``/``disc_epochs``/``adv_epochs`` of a trained row (its schedule).

    In ``source-only`` mode and in ``sda`` without a discriminator every epoch is a seg
    epoch (``engine/schedule.py``), so only their sum counts there.
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


def build_config(method: Method, budget: Budget, seed: int, data: Data, run_dir: Path,
                 device: str) -> Any:
    """The run's ``TrainConfig`` (the same fields ``stainadapt train`` takes as flags).

    A row with ``init`` starts G from the same seed's run of that row, the folder beside
    ``run_dir`` (``OUT/runs/<init>-seed<k>``).
    """
    from stainadapt.config import TrainConfig

    if method.mode == "eval":
        raise ValueError(f"{method.id} is evaluated, not trained")
    source = data.S if method.source == "S" else target_train_folder(data, seed,
                                                                     budget.val_fraction)
    values: dict[str, Any] = dict(
        source=str(source), target=str(data.T), out=str(run_dir), mode=method.mode,
        discs=disc_specs(method, budget), backbone=budget.backbone,
        steps_per_epoch=budget.steps_per_epoch,
        batch_size=budget.batch_size, lr=budget.lr, disc_lr=budget.disc_lr,
        dice_weight=budget.dice_weight, ema=budget.ema, image_size=budget.image_size,
        val_fraction=budget.val_fraction, seed=seed, device=device, amp=budget.amp,
        select=budget.select, augment=budget.augment, samples=budget.samples,
        **schedule_epochs(method, budget),
    )
    if method.discs:  # only where G has an adversarial term: elsewhere it changes nothing
        values["adv_loss"] = budget.adv_loss  # but would make the run look stale
    if method.init is not None:
        values["init"] = str(run_dir.parent / f"{method.init}-seed{seed}")
    defaults = TrainConfig()
    for key, template in method.extra.items():
        default = getattr(defaults, key)
        kind = str if default is None else type(default)  # e.g. select: None -> a name
        text = _fmt(template, budget)
        values[key] = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
    return TrainConfig(**values).validate()


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the fields that only say where things are (``init`` is a folder;
    which run is in it is the ``init_run`` entry, see :func:`run_identity`), and without
    ``adv_loss`` where there is no discriminator: it changes nothing there, and a change
    of the trainer's default would otherwise make every run without one stale."""
    skip = {"out", "source", "target", "device", "reference", "init"}
    if not config.get("discs"):
        skip.add("adv_loss")
    config = {"self_train_rounds": 0, **config}  # written before the field existed: off
    if not config["self_train_rounds"]:  # the epochs per round change nothing then
        skip.add("self_train_epochs")
    return {k: v for k, v in config.items() if k not in skip}


def run_identity(record: dict[str, Any] | None) -> str | None:
    """What names one training of a run: its result's ``uid`` (a JSON written before the
    uid existed: a hash of its date and configuration). A dependent stores its
    dependency's identity, so retraining the dependency (even with the same config, whose
    weights then differ) makes the dependent stale."""
    if record is None or record.get("status") != "ok":
        return None
    if record.get("uid"):
        return str(record["uid"])
    blob = json.dumps({"date": record.get("date"), "config": record.get("config")},
                      sort_keys=True, default=str)
    return "h" + hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- runs


def result_path(out: Path, method_id: str, seed: int) -> Path:
    return out / "results" / f"{method_id}-seed{seed}.json"


def run_dir_of(out: Path, method_id: str, seed: int) -> Path:
    return out / "runs" / f"{method_id}-seed{seed}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from stainadapt.engine.checkpoint import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class EvalSets:
    """Held-out PASM and Masson images of one seed, and the normalisers' reference."""

    def __init__(self, data: Data, seed: int, val_fraction: float) -> None:
        from stainadapt.data.folders import scan_domain
        from stainadapt.data.splits import split_samples
        from stainadapt.engine.evaluation import load_domain_images

        s_train, s_val = split_samples(scan_domain(data.S, require_masks=True),
                                       val_fraction, seed)
        _, t_val = split_samples(scan_domain(data.T, require_masks=True), val_fraction,
                                 seed + 1)
        self.S = load_domain_images(s_val, with_masks=True)
        self.T = load_domain_images(t_val, with_masks=True)
        self.reference = s_train[0].image
        self.names = {"S": [n for n, _, _ in self.S], "T": [n for n, _, _ in self.T]}


def evaluate_run(run: Path, sets: EvalSets, device: str,
                 normalizer: str | None = None) -> dict[str, Any]:
    from stainadapt.data.io import read_image
    from stainadapt.engine.checkpoint import load_model
    from stainadapt.engine.evaluation import evaluate_model
    from stainadapt.engine.trainer import resolve_device
    from stainadapt.registry import create

    dev = resolve_device(device)
    model, _ = load_model(run, device=dev)
    norm = None
    if normalizer is not None:
        norm = create("normalizers", normalizer).fit(read_image(sets.reference))
        norm = norm.to(dev) if hasattr(norm, "to") else norm
    return {"S": evaluate_model(model, sets.S, dev, normalizer=norm),
            "T": evaluate_model(model, sets.T, dev, normalizer=norm)}


def init_marker(run: Path) -> Path:
    """Beside a run folder: the identity of the run its G started from. config.toml names
    only the init *folder*, whose model changes when that run is trained again."""
    return run.with_name(run.name + ".init-run")


def _train_or_resume(config: Any, verbose: bool, init_run: str | None = None) -> Any:
    from stainadapt.config import dumps_toml
    from stainadapt.engine.trainer import resume, train

    run = Path(config.out)
    marker = init_marker(run)
    console = None
    if verbose:
        from rich.console import Console

        console = Console()
    if run.exists():
        cfg_file = run / "config.toml"
        same = cfg_file.is_file() and cfg_file.read_text(encoding="utf-8") == dumps_toml(config)
        started_from = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
        if same and started_from == init_run and (run / "state.pt").is_file():
            print(f"    resuming {run} from its last epoch", flush=True)
            return resume(run, console=console)
        if not cfg_file.is_file() and any(run.iterdir()):
            raise RuntimeError(f"{run}: exists and is not a stainadapt run; remove it")
        shutil.rmtree(run)
    if init_run is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(init_run + "\n", encoding="utf-8")
    else:
        marker.unlink(missing_ok=True)
    return train(config, console=console)


def run_one(method: Method, seed: int, budget: Budget, data: Data, out: Path, device: str,
            sets: EvalSets, keep_state: bool, verbose: bool) -> dict[str, Any]:
    """Train (or only evaluate) one method for one seed; returns its result record."""
    record: dict[str, Any] = {
        "id": method.id, "seed": seed, "paper": method.paper, "tables": method.tables,
        "mode": method.mode, "budget": asdict(budget), "data": data.command,
        "date": _now(), "uid": uuid.uuid4().hex, "host": _host(device),
        "threads": _threads(),
        "eval_images": {k: len(v) for k, v in sets.names.items()},
    }
    t0 = time.perf_counter()
    if method.mode == "eval":
        base = run_dir_of(out, method.base or "", seed)
        base_json = _read_json(result_path(out, method.base or "", seed)) or {}
        record.update(run=str(base), normalizer=method.normalizer,
                      reference=str(sets.reference),
                      config={**(base_json.get("config") or {}),
                              "eval_normalizer": method.normalizer,
                              "base_run": run_identity(base_json)})
        record["train_seconds"] = 0.0
    else:
        config = build_config(method, budget, seed, data, run_dir_of(out, method.id, seed),
                              device)
        init_run = None
        if method.init is not None:
            init_run = run_identity(_read_json(result_path(out, method.init, seed)))
            if init_run is None:
                raise RuntimeError(f"its init run {method.init} seed {seed} has no result")
        record.update(run=config.out, config=expected_config(method, budget, seed, data, out,
                                                             device))
        record["init_run"] = init_run
        result = _train_or_resume(config, verbose, init_run)
        record["train_seconds"] = round(time.perf_counter() - t0, 2)
        record["best_epoch"] = result.best_epoch
        record["epochs"] = result.epochs
        record["skipped_steps"] = result.skipped_steps
        last = result.records[-1] if result.records else {}
        record["disc_acc_last_epoch"] = last.get("disc_acc") or {}
        record["losses_last_epoch"] = last.get("losses") or {}
        base = Path(config.out)
    t1 = time.perf_counter()
    record.update(evaluate_run(base, sets, device, method.normalizer))
    record["eval_seconds"] = round(time.perf_counter() - t1, 2)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["status"] = "ok"
    if method.mode != "eval" and not keep_state:
        (base / "state.pt").unlink(missing_ok=True)  # hundreds of MB per run at resnet34
    return record


def expected_config(method: Method, budget: Budget, seed: int, data: Data, out: Path,
                    device: str) -> dict[str, Any] | None:
    """The configuration a trained row's result must carry to be reused: its TrainConfig
    plus, for a row with ``init``, ``init_run`` = the identity of the init row's current
    result (None while that has none)."""
    if method.mode == "eval":
        return None
    config = build_config(method, budget, seed, data, run_dir_of(out, method.id, seed),
                          device).as_dict()
    if method.init is not None:
        config["init_run"] = run_identity(_read_json(result_path(out, method.init, seed)))
    return config


DATA_FIELDS = ("data_n", "data_size", "data_seed")


def is_done(record: dict[str, Any] | None, expected: dict[str, Any] | None,
            base_record: dict[str, Any] | None = None,
            budget: Budget | None = None) -> tuple[bool, str]:
    """Whether a stored result can be reused, and why not."""
    if record is None:
        return False, "new"
    if record.get("status") != "ok":
        return False, "failed before: retrying"
    stored = record.get("budget") or {}
    if budget is not None and any(stored.get(k) != getattr(budget, k) for k in DATA_FIELDS):
        return False, "stale (other data): running again"
    if expected is not None and expected.get("init_run", "absent") != \
            (record.get("config") or {}).get("init_run", "absent"):
        return False, "stale (its init run was trained again): training again"
    if expected is not None and _comparable(record.get("config") or {}) != _comparable(expected):
        return False, "stale (configuration changed): training again"
    if expected is None and base_record is not None:
        config = record.get("config") or {}
        if _comparable({k: v for k, v in config.items()
                        if k not in ("eval_normalizer", "base_run")}) != \
                _comparable(base_record.get("config") or {}) or \
                config.get("base_run") != run_identity(base_record):
            return False, "stale (its base run changed): evaluating again"
    return True, "done"


def plan_methods(only: str | None) -> list[Method]:
    """The rows to run, every dependency (``base``, ``init``) included and before its
    dependents (per seed: run_all loops over seeds outside)."""
    if not only:
        only = ",".join(BY_ID)
    ids = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [i for i in ids if i not in BY_ID]
    if unknown:
        raise SystemExit(f"unknown method id(s) {', '.join(unknown)}; "
                         f"known: {', '.join(BY_ID)}")
    ordered: list[Method] = []

    def visit(m: Method) -> None:  # an evaluated row needs its base, an adapted its init
        if m in ordered:
            return
        if m.depends_on is not None:
            visit(BY_ID[m.depends_on])
        ordered.append(m)

    for m in METHODS:
        if m.id in ids:
            visit(m)
    return ordered


def run_task(method: Method, seed: int, args: argparse.Namespace, budget: Budget, data: Data,
             out: Path, sets_cache: dict[int, EvalSets]) -> tuple[str, list[str]]:
    """One (method, seed): skip it, train or evaluate it, or record its failure.

    Returns the outcome (``trained``, ``evaluated``, ``skipped`` or ``failed``) and the
    lines to print after its tag. A failure is written to its result JSON and retried by
    the next invocation; Ctrl-C propagates (the trainer has saved a resumable state).
    """
    path = result_path(out, method.id, seed)
    lines: list[str] = []
    try:
        expected = expected_config(method, budget, seed, data, out, args.device)
        dep = method.depends_on
        dep_rec = _read_json(result_path(out, dep, seed)) if dep else None
        if dep is not None and run_identity(dep_rec) is None:
            raise RuntimeError(f"{dep} seed {seed}, which it "
                               f"{'evaluates' if method.base else 'starts from'}, "
                               "has no result (failed?)")
        done, why = is_done(_read_json(path), expected,
                            dep_rec if method.base else None, budget)
        if done:
            return "skipped", [f"skip (result exists: {path})"]
        if why != "new":
            lines.append(why)
        if seed not in sets_cache:
            sets_cache[seed] = EvalSets(data, seed, budget.val_fraction)
        record = run_one(method, seed, budget, data, out, args.device, sets_cache[seed],
                         args.keep_state, args.verbose)
        _write_json(path, record)
        lines.append(f"{record['seconds']:.1f} s (train {record['train_seconds']:.1f} s) "
                     f"Masson Dice {record['T'].get('dice', float('nan')):.4f}, "
                     f"PASM Dice {record['S'].get('dice', float('nan')):.4f}")
        return ("evaluated" if method.mode == "eval" else "trained"), lines
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - record it, go on with the other runs
        _write_error(out, method.id, seed, budget, f"{type(exc).__name__}: {exc}")
        return "failed", [*lines, f"FAILED: {type(exc).__name__}: {exc}"]


def _write_error(out: Path, method_id: str, seed: int, budget: Budget, error: str) -> None:
    """The result JSON of a failed run: the next invocation retries it."""
    _write_json(result_path(out, method_id, seed), {
        "id": method_id, "seed": seed, "status": "error", "error": error, "date": _now(),
        "budget": asdict(budget)})


def _tag(plan: list[tuple[Method, int]], i: int) -> str:
    """``[ i/N] id seed k``: how a run's lines start (i counts from 1 in plan order)."""
    method, seed = plan[i - 1]
    return f"[{i:>{len(str(len(plan)))}}/{len(plan)}] {method.id} seed {seed}"


def _print_outcome(tag: str, outcome: str, lines: list[str], started: float) -> None:
    """A run's lines after its tag, the last with the invocation's elapsed time."""
    lines = lines or [""]
    elapsed = "" if outcome == "skipped" else \
        f"; elapsed {_clock(time.perf_counter() - started)}"
    for j, line in enumerate(lines):
        print(f"{tag}: {line}{elapsed if j == len(lines) - 1 else ''}", flush=True)


def _new_counts() -> dict[str, int]:
    return {"trained": 0, "evaluated": 0, "skipped": 0, "failed": 0}


def run_all(args: argparse.Namespace, budget: Budget, out: Path) -> dict[str, Any]:
    seeds = list(range(args.seeds if args.seeds is not None else budget.seeds))
    methods = plan_methods(args.only)
    data = ensure_data(budget, out)
    plan = [(m, s) for s in seeds for m in methods]
    if args.jobs > 1:
        return run_parallel(args, budget, out, plan)
    started = time.perf_counter()
    counts = _new_counts()
    sets_cache: dict[int, EvalSets] = {}
    for i, (method, seed) in enumerate(plan, 1):
        tag = _tag(plan, i)
        try:
            outcome, lines = run_task(method, seed, args, budget, data, out, sets_cache)
        except KeyboardInterrupt:
            print(f"{tag}: interrupted; run the same command again to continue", flush=True)
            raise
        counts[outcome] += 1
        _print_outcome(tag, outcome, lines, started)
    return {"seeds": seeds, "methods": [m.id for m in methods], "counts": counts,
            "wall_seconds": round(time.perf_counter() - started, 1), "jobs": 1}


def default_jobs(device: str) -> int:
    """1 on a GPU (one run fills it); on a CPU one run per core, at most 8 (memory).

    On 2 cores, two one-thread runs at once finished the demo's trainings ~1.5x sooner
    than one two-thread run after the other (benchmarks/RESULTS.md).
    """
    try:
        from stainadapt.engine.trainer import resolve_device

        if resolve_device(device).type != "cpu":
            return 1
    except Exception:  # noqa: BLE001 - a bad --device fails in the runs, with its message
        return 1
    return max(1, min(8, os.cpu_count() or 1))


TASK_LINE = "paper-table-task "  # how a --task child reports its outcome to the parent


def _child_command(args: argparse.Namespace, budget_name: str, out: Path, method: Method,
                   seed: int) -> list[str]:
    """The ``--task`` command line that runs one (method, seed) as the parent would."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--budget", budget_name,
           "--out", str(out), "--device", args.device, "--task", f"{method.id}:{seed}"]
    for item in args.overrides:
        cmd += ["--set", item]
    if args.keep_state:
        cmd.append("--keep-state")
    if args.verbose:
        cmd.append("--verbose")
    return cmd


def task_cost(method: Method, budget: Budget) -> float:
    """A run's rough cost in seg-epoch units: what ``--jobs`` schedules by.

    An adversarial epoch runs S and T through G and every discriminator twice (G step,
    D step): about twice a seg epoch; so does an sda seg epoch (S and T labelled). An
    evaluated row (no training) costs next to nothing.
    """
    if method.mode == "eval":
        return 0.1
    e = schedule_epochs(method, budget)
    seg = 2.0 if method.mode == "sda" else 1.0
    self_train = e.get("self_train_rounds", 0) * e.get("self_train_epochs", 0)  # S + T
    return (seg * e["pretrain_epochs"] + e["disc_epochs"] + 2.0 * e["adv_epochs"]
            + 2.0 * self_train)


def critical_path(plan: list[tuple[Method, int]], budget: Budget) -> dict[tuple[str, int], float]:
    """Each task's cost plus the longest chain of tasks (same seed) that wait for it.

    ``--jobs`` starts the ready task with the longest such path first (list scheduling
    by critical path): the shared source G, which every adapted row waits for, and the
    long from-scratch rows go first, so the last minutes are not one long run alone.
    """
    ids = {(m.id, s) for m, s in plan}
    children: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for m, s in plan:
        if m.depends_on is not None and (m.depends_on, s) in ids:
            children.setdefault((m.depends_on, s), []).append((m.id, s))
    cost = {(m.id, s): task_cost(m, budget) for m, s in plan}
    memo: dict[tuple[str, int], float] = {}

    def path(key: tuple[str, int]) -> float:
        if key not in memo:
            memo[key] = cost[key] + max((path(c) for c in children.get(key, [])), default=0.0)
        return memo[key]

    return {key: path(key) for key in cost}


def start_order(plan: list[tuple[Method, int]], budget: Budget) -> list[tuple[Method, int]]:
    """``plan`` by descending :func:`critical_path`; ties keep the plan's order."""
    priority = critical_path(plan, budget)
    return sorted(plan, key=lambda t: -priority[(t[0].id, t[1])])


def run_parallel(args: argparse.Namespace, budget: Budget, out: Path,
                 plan: list[tuple[Method, int]]) -> dict[str, Any]:
    """``--jobs N``: up to N (method, seed) runs at once, each its own process.

    Why processes: on a few CPU cores, small convolutions at batch 4 use threads poorly;
    two one-thread trainings finish ~1.5x sooner than one after the other with two threads
    each (benchmarks/RESULTS.md). Each child gets ``cores // N`` threads
    (``OMP_NUM_THREADS``) and writes its output to ``OUT/logs/ID-seedK.log``. A run
    starts once the run it depends on (same seed) has finished in this invocation, so the
    order, skipping, staleness and resuming are exactly those of the serial loop (the
    child runs the same :func:`run_task`); among the runs ready to start, the one with
    the longest :func:`critical_path` starts first. Results differ from a serial run by the
    thread count only (CPU kernels are deterministic per thread count).
    """
    started = time.perf_counter()
    counts = _new_counts()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    index = {(m.id, s): i for i, (m, s) in enumerate(plan, 1)}
    pending = start_order(plan, budget)
    running: dict[tuple[str, int], tuple[subprocess.Popen, Path]] = {}
    print(f"{args.jobs} runs at a time, {threads} thread(s) each; logs in {logs}", flush=True)

    def ready(method: Method, seed: int) -> bool:
        dep = method.depends_on
        return dep is None or ((dep, seed) not in running
                               and all((m.id, s) != (dep, seed) for m, s in pending))

    def finish(key: tuple[str, int], proc: subprocess.Popen, log: Path) -> None:
        report = None
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(TASK_LINE):
                report = json.loads(line[len(TASK_LINE):])
        if report is None:  # killed (memory?) or crashed before reporting
            _write_error(out, key[0], key[1], budget,
                         f"its process exited with code {proc.returncode}; see {log}")
            report = {"outcome": "failed",
                      "lines": [f"FAILED: exit code {proc.returncode}; see {log}"]}
        counts[report["outcome"]] += 1
        _print_outcome(_tag(plan, index[key]), report["outcome"], report["lines"], started)

    try:
        while pending or running:
            for method, seed in list(pending):
                if len(running) >= args.jobs:
                    break
                if ready(method, seed):
                    pending.remove((method, seed))
                    log = logs / f"{method.id}-seed{seed}.log"
                    with open(log, "w", encoding="utf-8") as fh:
                        proc = subprocess.Popen(
                            _child_command(args, budget.name, out, method, seed), env=env,
                            stdout=fh, stderr=subprocess.STDOUT, cwd=os.getcwd())
                    key = (method.id, seed)
                    running[key] = (proc, log)
                    print(f"{_tag(plan, index[key])}: started; elapsed "
                          f"{_clock(time.perf_counter() - started)}", flush=True)
            for key, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    del running[key]
                    finish(key, proc, log)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for proc, _ in running.values():  # each child saves its resumable state first
            proc.wait()
        print("interrupted; run the same command again to continue", flush=True)
        raise
    return {"seeds": sorted({s for _, s in plan}), "methods": list(dict.fromkeys(
        m.id for m, _ in plan)), "counts": counts,
        "wall_seconds": round(time.perf_counter() - started, 1), "jobs": args.jobs}


def run_child(args: argparse.Namespace, budget: Budget, out: Path) -> int:
    """``--task ID:SEED`` (used by ``--jobs``): run one task, report it on one line."""
    mid, _, seed = args.task.partition(":")
    if mid not in BY_ID or not seed.isdigit():
        raise SystemExit(f"--task wants METHOD:SEED with a known method, got {args.task!r}")
    data = ensure_data(budget, out)
    try:
        outcome, lines = run_task(BY_ID[mid], int(seed), args, budget, data, out, {})
    except KeyboardInterrupt:
        return 130
    print(TASK_LINE + json.dumps({"outcome": outcome, "lines": lines}), flush=True)
    return 0


# --------------------------------------------------------------------------- rendering


def load_results(out: Path) -> list[dict[str, Any]]:
    folder = out / "results"
    rows = [_read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in rows if r is not None]


@dataclass
class Stat:
    mean: float
    std: float | None  # over seeds; None with one seed
    n: int


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], Stat]:
    """(method id, "S"|"T", "dice"|"accuracy") -> mean, std over seeds (in %)."""
    import statistics

    values: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        for dom in ("S", "T"):
            for metric in ("dice", "accuracy"):
                v = (r.get(dom) or {}).get(metric)
                if v is not None and math.isfinite(v):
                    values.setdefault((r["id"], dom, metric), []).append(100.0 * v)
    return {k: Stat(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
            for k, v in values.items()}


def _ours(stats: dict, mid: str, dom: str, metric: str) -> str:
    s = stats.get((mid, dom, metric))
    if s is None:
        return "–"
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f}"


def _paper(mid: str, dom: str, metric: str) -> str:
    p = PAPER.get(mid, {}).get(dom)
    if p is None:
        return "–"
    mean, std = (p[0], p[1]) if metric == "dice" else (p[2], p[3])
    return f"{mean:.2f} ± {std:.2f}"


def check_claims(stats: dict) -> list[tuple[tuple[str, str, str, str, str], str]]:
    """Each claim with its verdict: holds, tie, within seed noise, BROKEN, not measured."""
    out = []
    for claim in CLAIMS:
        lo, hi, dom, rel, _ = claim
        a, b = stats.get((lo, dom, "dice")), stats.get((hi, dom, "dice"))
        if a is None or b is None:
            out.append((claim, "not measured"))
            continue
        noise = max(a.std or 0.0, b.std or 0.0)
        if rel == "<" and abs(a.mean - b.mean) < 1e-9:
            verdict = "tie"
        elif a.mean < b.mean or (rel == "<=" and a.mean <= b.mean + noise):
            verdict = "holds"
            if rel == "<" and b.mean - a.mean < noise:
                verdict = "holds (within seed noise)"
        else:
            verdict = "within seed noise" if a.mean - b.mean < noise else "BROKEN"
        out.append((claim, verdict))
    return out


def _name(mid: str) -> str:
    """How claims, the ordering and the chart name a method: its id (the paper's names
    repeat: two rows are called "Origin")."""
    return mid


def ordering_line(stats: dict) -> str:
    ranked = sorted((s.mean, mid) for (mid, dom, metric), s in stats.items()
                    if dom == "T" and metric == "dice" and BY_ID.get(mid) is not None
                    and "2" in BY_ID[mid].tables)
    return " < ".join(f"{_name(m)} {v:.1f}" for v, m in ranked) or "(nothing measured)"


def gap_recovered(stats: dict, method: str = "uda-sed",
                  baseline: str = SOURCE) -> float | None:
    """(method - baseline) / (sda-sed - baseline), Masson Dice means; the paper's figure is
    the default (UDA-sed over source-only)."""
    so, ours, sda = (stats.get((m, "T", "dice")) for m in (baseline, method, "sda-sed"))
    if so is None or ours is None or sda is None or abs(sda.mean - so.mean) < 1e-9:
        return None
    return (ours.mean - so.mean) / (sda.mean - so.mean)


# The gap figures the Markdown prints: (label, method, baseline). The first is the
# paper's; the others ask whether UDA-sed's gain survives an equally long source-only
# run and the alpha = 0 control, and how much of the gap the control alone recovers.
GAPS: tuple[tuple[str, str, str], ...] = (
    ("UDA-sed over source-only (s0 epochs; the paper's figure)", "uda-sed", SOURCE),
    ("UDA-sed over source-only-longer (s0 + adv epochs: as many G updates)", "uda-sed",
     "source-only-longer"),
    ("UDA-sed over the α = 0 control uda-sed-zero (same run, no adversarial gradient)",
     "uda-sed", "uda-sed-zero"),
    ("the α = 0 control uda-sed-zero in place of UDA-sed, over source-only",
     "uda-sed-zero", SOURCE),
    ("UDA-sed + self-training over source-only (not in the paper)", "uda-sed-st", SOURCE),
    ("self-training alone (from the source G) over source-only (not in the paper)",
     "self-training", SOURCE),
    ("UDA-sed + self-training over source-only-longer", "uda-sed-st", "source-only-longer"),
    ("UDA-sed + self-training over the control longer-st (as many G updates, no "
     "adversarial term before the self-training)", "uda-sed-st", "longer-st"),
)


def render_markdown(out: Path, results: list[dict[str, Any]], invocations: list[dict],
                    png: Path | None, md_path: Path) -> str:
    stats = aggregate(results)
    ok = [r for r in results if r.get("status") == "ok"]
    failed = [r for r in results if r.get("status") != "ok"]
    budgets = {json.dumps(budget_of(r), sort_keys=True) for r in ok}
    budget = json.loads(next(iter(budgets))) if budgets else None
    seeds = sorted({r["seed"] for r in ok})
    lines: list[str] = ["# The paper's Tables 1 and 2 on the synthetic stains", ""]
    lines += [
        "Reproduction of Mei, Zhu et al. (ICASSP 2020) Tables 1 and 2 with every method of "
        "`benchmarks/paper_table.py` (issue 11). S = synthetic PASM, T = synthetic Masson "
        "(`stainadapt synth`); the paper's numbers are on real biopsies, so compare the "
        "**orderings**, not the values.",
        "",
    ]
    if invocations:
        last = invocations[-1]
        lines += [f"- Command: `{last['command']}`",
                  f"- Date (UTC): {last['finished']}; budget `{last['budget']}`; "
                  f"this invocation's wall time {_clock(last['wall_seconds'])} "
                  f"({last['counts']}; {last.get('jobs', 1)} run(s) at a time)"]
        if len(invocations) > 1:
            lines.append(f"- Earlier invocations into the same folder: {len(invocations) - 1} "
                         "(listed under *Runs*)")
    total = sum(r.get("seconds", 0.0) for r in ok)
    hosts = sorted({r.get("host", "?") + (f", {r['threads']} thread(s)" if "threads" in r
                                          else "") for r in ok})
    lines += [
        f"- Compute: {len(ok)} results, {_clock(total)} of training + evaluation summed over "
        f"runs; seeds {', '.join(map(str, seeds)) or '–'}; on {'; '.join(hosts) or '–'}",
        f"- Data: `{ok[0]['data']}`" if ok else "- Data: –",
    ]
    if ok:
        n = ok[0].get("eval_images", {})
        lines.append(
            f"- Test images: the trainer's held-out validation splits of each seed "
            f"({n.get('S', '?')} PASM, {n.get('T', '?')} Masson tiles, whole tiles), the same "
            "for every method of a seed; no run reads the Masson test masks "
            f"(model selection: `{(budget or {}).get('select')}`; the supervised-DA rows "
            "st-scratch, sda-s and sda-sed keep their last epoch).")
    if len(budgets) > 1:
        lines.append(f"- **Warning**: the results come from {len(budgets)} different budgets; "
                     "rerun without `--render-only` to bring them to one.")
    counts = {s.n for (_, dom, metric), s in stats.items() if dom == "T" and metric == "dice"}
    if len(counts) > 1:
        lines.append(f"- Not every row has every seed ({', '.join(map(str, sorted(counts)))}"
                     " seeds): the `n` column says how many each row's mean is over.")
    if failed:
        lines.append("- **Failed runs**: " + "; ".join(
            f"{r.get('id')} seed {r.get('seed')}: {r.get('error')}" for r in failed))
    lines += ["", "Numbers: Dice (DC) and pixel accuracy (Acc) in %, **ours = mean ± sample "
              "std over seeds** (one seed: no ±), paper = mean ± std as printed.", ""]

    # ---- Table 1
    lines += ["## Table 1: supervised DA (tested on PASM and on Masson)", "",
              "| Training set | Method | PASM DC ours | PASM DC paper | PASM Acc ours | "
              "PASM Acc paper | Masson DC ours | Masson DC paper | Masson Acc ours | "
              "Masson Acc paper | n |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        if "1" not in m.tables:
            continue
        cells = []
        for dom in ("S", "T"):
            for metric in ("dice", "accuracy"):
                cells += [_ours(stats, m.id, dom, metric), _paper(m.id, dom, metric)]
        lines.append(f"| {m.trained_on} | {m.paper} | " + " | ".join(cells)
                     + f" | {_n(stats, m.id)} |")

    # ---- Table 2
    lines += ["", "## Table 2: unsupervised DA (tested on Masson)", "",
              "| Training set | Method | Masson DC ours | Masson DC paper | Masson Acc ours | "
              "Masson Acc paper | PASM DC ours | n |",
              "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        if "2" not in m.tables:
            continue
        trained = m.trained_on if m.id != "sda-sed" else "P & M (labelled T: upper bound)"
        lines.append(
            f"| {trained} | {m.paper} | {_ours(stats, m.id, 'T', 'dice')} | "
            f"{_paper(m.id, 'T', 'dice')} | {_ours(stats, m.id, 'T', 'accuracy')} | "
            f"{_paper(m.id, 'T', 'accuracy')} | {_ours(stats, m.id, 'S', 'dice')} | "
            f"{_n(stats, m.id)} |")

    # ---- gap, ordering
    lines += ["", "## Gap recovered", "",
              "(UDA-sed − source-only) / (SDA-sed − source-only), Masson Dice means: "
              f"ours {_gap_text(stats, 'uda-sed', SOURCE, bold=True)}; "
              f"paper {100 * PAPER_GAP:.0f} % ((87.73 − 78.64) / (90.49 − 78.64)).", "",
              "With self-training after UDA-sed (`uda-sed-st`: the same model, then "
              "`--self-train-rounds`; not in the paper): "
              f"{_gap_text(stats, 'uda-sed-st', SOURCE, bold=True)}; self-training from the "
              f"source G alone (`self-training`): {_gap_text(stats, 'self-training', SOURCE)}.",
              "",
              "The same fraction, (method − baseline) / (SDA-sed − baseline), with other "
              "baselines (ours only; the paper has none of them):", "",
              "| gap | ours |", "|---|---|"]
    lines += [f"| {label} | {_gap_text(stats, mid, base)} |" for label, mid, base in GAPS]
    lines.append("")
    verdicts = check_claims(stats)
    broken = [(c, v) for c, v in verdicts if v in ("BROKEN", "tie")]
    lines += ["## Ordering", "",
              f"Ours, Table 2 rows by Masson Dice: {ordering_line(stats)}.", "",
              "Paper's claimed order: source-only < single-layer (SF-4, SF-9) < AFC < "
              "mirrored (UDA-ed) < mirrored + shape (ours) <= supervised DA.", ""]
    if broken:
        lines.append("**Where ours differs from the paper**: " + "; ".join(
            f"{_name(lo)} {rel} {_name(hi)} on {_dom(dom)}" + (" (tie)" if v == "tie" else "")
            for (lo, hi, dom, rel, _), v in broken)
            + ".")
    elif any(v != "not measured" for _, v in verdicts):
        lines.append("No measured claim is broken (see the noise notes below).")
    lines += ["", "| claim | on | ours (DC %) | verdict | paper's source |",
              "|---|---|---|---|---|"]
    for (lo, hi, dom, rel, where), verdict in verdicts:
        a, b = stats.get((lo, dom, "dice")), stats.get((hi, dom, "dice"))
        nums = "–" if a is None or b is None else f"{a.mean:.2f} vs {b.mean:.2f}"
        lines.append(f"| {_name(lo)} {rel} {_name(hi)} | {_dom(dom)} | {nums} | {verdict} | "
                     f"{where} |")
    lines += ["", "A claim `a < b` holds when ours has mean(a) < mean(b); `<=` also holds "
              "when mean(a) exceeds mean(b) by less than the larger seed std. With one seed "
              "there is no noise estimate, and single-seed differences of a few Dice points "
              "are within what reseeding moves (see benchmarks/RESULTS.md, *Demo*).", ""]
    if png is not None and png.is_file():
        rel = os.path.relpath(png, md_path.parent)
        lines += [f"![Masson Dice per method, ours and the paper's]({rel})", ""]

    # ---- methods and budget
    lines += ["## Methods (exact configuration)", "",
              "Every trained run is `stainadapt.engine.trainer.train(TrainConfig(...))`, i.e. "
              "`stainadapt train` with these flags, plus the budget below. The paper's "
              "schedule: G on PASM for s0 epochs, then D alone for d0, then alternate. Per "
              f"seed the `{SOURCE}` run (s0 epochs) is that first stage, trained once: the "
              "rows that start from the shared source G continue its model "
              "(`--init`, `pretrain_epochs = 0`); the others train from the seed's "
              "initialisation (same seed => same G initialisation and the same splits for "
              "every method). Adversarial rows use G's loss form "
              f"`adv_loss = {(budget or asdict(QUICK)).get('adv_loss', 'flip')}` "
              "(flip where a stored budget names none: the trainer's default).", "",
              "| id | paper | mode | trained on | G starts from | epochs | --disc | extra | "
              "test-time normaliser |",
              "|---|---|---|---|---|---|---|---|---|"]
    b = Budget(**budget) if budget else QUICK
    for m in METHODS:
        discs = " ".join(f"`{d}`" for d in disc_specs(m, b)) or "–"
        if m.mode == "sda" and not m.discs:
            discs = "none (L_seg over S and T labels)"
        extra = ", ".join(f"{k}={_fmt(v, b)}" for k, v in m.extra.items()) or "–"
        on = {"S": "PASM", "T": "Masson (its training split)"}[m.source]
        if m.mode in ("sda", "uda"):
            on += " + Masson" + (" (labelled)" if m.mode == "sda" else " (unlabelled)")
        mode = m.mode if m.mode != "eval" else f"model of `{m.base}`"
        if m.schedule == "st":
            on += " + Masson (unlabelled; its pseudo-labels)"
            mode += " + `--self-train-rounds`"
        norm = f"`{m.normalizer}` fitted on a PASM training tile" if m.normalizer else "–"
        lines.append(f"| {m.id} | {m.paper} | {mode} | {on} | {starts_from(m)} | "
                     f"{epochs_text(m, b)} | {discs} | {extra} | {norm} |")
    if budget:
        lines += ["", "## Budget", "", "| field | value |", "|---|---|"]
        lines += [f"| {f.name} | {budget.get(f.name)} |" for f in fields(Budget)]
    # ---- runs
    lines += ["", "## Runs", "", "| id | seed | Masson DC | PASM DC | selected epoch | "
              "train s | D accuracy (last epoch) |", "|---|---|---|---|---|---|---|"]
    for r in sorted(ok, key=lambda r: (r["seed"], _order(r["id"]))):
        accs = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("disc_acc_last_epoch") or {}).items())
        sel = r.get("best_epoch")
        lines.append(f"| {r['id']} | {r['seed']} | {100 * r['T'].get('dice', math.nan):.2f} | "
                     f"{100 * r['S'].get('dice', math.nan):.2f} | "
                     f"{'–' if sel is None else sel + 1} | {r.get('train_seconds', 0):.0f} | "
                     f"{accs or '–'} |")
    if invocations:
        lines += ["", "Invocations into this folder:", ""]
        lines += [f"- {inv['finished']}: `{inv['command']}` ({_clock(inv['wall_seconds'])}, "
                  f"{inv['counts']})" for inv in invocations]
    return "\n".join(lines) + "\n"


def budget_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """A result's stored budget, with fields added to :class:`Budget` since it was written
    at their defaults: they change nothing for the rows that existed then (e.g. the
    self-training rounds), so they must not split the results into "different budgets"."""
    stored = record.get("budget")
    if stored is None:
        return None
    return {**{f.name: f.default for f in fields(Budget)}, **stored}


def _gap_text(stats: dict, method: str, baseline: str, bold: bool = False) -> str:
    gap = gap_recovered(stats, method, baseline)
    if gap is not None:
        return f"**{100 * gap:.0f} %**" if bold else f"{100 * gap:.0f} %"
    if all((m, "T", "dice") in stats for m in (baseline, method, "sda-sed")):
        return f"undefined (SDA-sed and {baseline} have the same Masson Dice)"
    return f"not measured (needs {baseline}, {method} and sda-sed)"


def starts_from(method: Method) -> str:
    """The method table's "G starts from" cell."""
    if method.mode == "eval":
        return f"(evaluates the `{method.base}` model)"
    if method.init == SOURCE:
        return f"the shared source G (this seed's `{SOURCE}` run)"
    if method.init is not None:
        return f"this seed's `{method.init}` run"
    return "scratch (the seed's initialisation)"


def epochs_text(method: Method, budget: Budget) -> str:
    """The method table's "epochs" cell, in the budget's numbers."""
    if method.mode == "eval":
        return "–"
    e = schedule_epochs(method, budget)
    if method.schedule == "d0+adv":
        return f"{e['disc_epochs']} D only + {e['adv_epochs']} adversarial"
    if method.schedule == "st":
        return (f"{e['self_train_rounds']} self-training rounds x {e['self_train_epochs']} "
                "(PASM labels + Masson pseudo-labels)")
    n = e["pretrain_epochs"] + e["adv_epochs"]
    if method.init is not None:
        return f"{n} more on L_seg ({method.schedule}; s0 + adv in all)"
    return f"{n} on L_seg ({method.schedule})"


def _n(stats: dict, mid: str) -> str:
    s = stats.get((mid, "T", "dice")) or stats.get((mid, "S", "dice"))
    return str(s.n) if s else "0"


def _dom(dom: str) -> str:
    return {"S": "PASM", "T": "Masson"}[dom]


def _order(mid: str) -> int:
    return list(BY_ID).index(mid) if mid in BY_ID else len(BY_ID)


def render_chart(stats: dict, path: Path) -> Path | None:
    """Horizontal bars: Masson Dice per method, ours (± seed std) beside the paper's."""
    from PIL import Image, ImageDraw

    from stainadapt.engine.checkpoint import atomic_write_bytes

    rows = [m for m in METHODS if (m.id, "T", "dice") in stats or m.id in PAPER]
    if not rows:
        return None
    label_w, bar_w, row_h, top = 230, 560, 30, 40
    width, height = label_w + bar_w + 90, top + row_h * len(rows) + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), "Dice on Masson (%): ours (blue, ± seed std) vs paper (grey)",
              fill="black")

    def x(v: float) -> float:
        return label_w + bar_w * max(0.0, min(v, 100.0)) / 100.0

    for k in range(0, 101, 20):
        draw.line([(x(k), top - 4), (x(k), height - 30)], fill=(225, 225, 225))
        draw.text((x(k) - 6, height - 26), str(k), fill="black")
    for i, m in enumerate(rows):
        y = top + i * row_h
        draw.text((8, y + 8), m.id, fill="black")
        s = stats.get((m.id, "T", "dice"))
        if s is not None:
            draw.rectangle([label_w, y + 3, x(s.mean), y + 14], fill=(31, 119, 180))
            if s.std:
                lo, hi = x(s.mean - s.std), x(s.mean + s.std)
                draw.line([(lo, y + 8), (hi, y + 8)], fill="black", width=2)
            draw.text((x(s.mean) + 4, y + 2), f"{s.mean:.1f}", fill=(31, 119, 180))
        p = PAPER.get(m.id, {}).get("T")
        if p is not None:
            draw.rectangle([label_w, y + 16, x(p[0]), y + 26], fill=(160, 160, 160))
            draw.text((x(p[0]) + 4, y + 15), f"{p[0]:.1f}", fill=(110, 110, 110))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def render(out: Path, md_path: Path, png_path: Path | None) -> str:
    from stainadapt.engine.checkpoint import atomic_write_text

    results = load_results(out)
    invocations = _read_invocations(out)
    png = render_chart(aggregate(results), png_path) if png_path is not None else None
    text = render_markdown(out, results, invocations, png, md_path)
    notes = md_path.with_name(md_path.stem + "_NOTES.md")
    if notes.is_file():  # the hand-written reading ("why"), kept across re-renders
        text = text.rstrip("\n") + "\n\n" + notes.read_text(encoding="utf-8").strip() + "\n"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md_path, text)
    return text


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _host(device: str) -> str:
    try:
        from stainadapt.engine.trainer import resolve_device

        dev = resolve_device(device)
        if dev.type == "cuda":
            import torch

            return f"CUDA {torch.cuda.get_device_name(dev)}"
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def _threads() -> int:
    """CPU threads of this process's kernels: CPU results depend on it (RESULTS.md)."""
    import torch

    return torch.get_num_threads()


def _read_invocations(out: Path) -> list[dict[str, Any]]:
    path = out / "invocations.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _append_invocation(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "invocations.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def apply_overrides(budget: Budget, items: Sequence[str]) -> Budget:
    """``--set key=value`` onto the budget, typed by the field's current value."""
    names = {f.name for f in fields(Budget)}
    changes: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in names or key == "name":
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(sorted(names - {'name'}))}")
        current = getattr(budget, key)
        text = text.strip()
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes", "on")
            else:
                value = type(current)(text)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {key} takes a {type(current).__name__}") from None
        changes[key] = value
    return replace(budget, **changes) if changes else budget


def methods_listing(budget: Budget) -> str:
    rows = []
    for m in METHODS:
        d = dataclasses.asdict(m)
        d["discs"] = disc_specs(m, budget)
        d["extra"] = {k: _fmt(v, budget) for k, v in m.extra.items()}
        d["epochs"] = schedule_epochs(m, budget) if m.schedule else None
        rows.append(d)
    return json.dumps({"budget": asdict(budget), "methods": rows}, indent=2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="paper_table.py",
        description="Reproduce the paper's Tables 1 and 2 on the synthetic stains.")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full",
                   help="recipe size: quick (~30 min, 2 CPU cores), full (GPU), tiny (tests)")
    p.add_argument("--quick", action="store_true", help="same as --budget quick")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 (default: the budget's: quick 1, full 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="runs, results and data (default: runs/paper-table-<budget>)")
    p.add_argument("--only", default=None, help="comma-separated method ids (see --list)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a Budget field (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--render-only", action="store_true",
                   help="only rebuild the Markdown and the chart from OUT/results/*.json")
    p.add_argument("--md", type=Path, default=DEFAULT_MD, help="Markdown output")
    p.add_argument("--png", type=Path, default=None,
                   help="chart output (default: paper_table.png beside the Markdown)")
    p.add_argument("--keep-state", action="store_true",
                   help="keep each run's state.pt (deleted by default once the result is in)")
    p.add_argument("--verbose", action="store_true", help="the trainer's own summary per run")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time, each its own process with cores/JOBS threads "
                        "(default: on a GPU 1; on a CPU one per core, at most 8)")
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)  # a --jobs child
    p.add_argument("--list", action="store_true",
                   help="print the budget and every method's resolved configuration (JSON)")
    args = p.parse_args(argv)
    if args.quick:
        args.budget = "quick"
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budget = apply_overrides(BUDGETS[args.budget], args.overrides)
    if args.list:
        print(methods_listing(budget))
        return 0
    out = args.out or Path("runs") / f"paper-table-{budget.name}"
    if args.task is not None:
        return run_child(args, budget, out)
    if args.jobs is None:
        args.jobs = default_jobs(args.device)
    png = args.png or args.md.with_name("paper_table.png")
    command = "python benchmarks/paper_table.py " + shlex.join(
        list(sys.argv[1:] if argv is None else argv))
    failed = 0
    if not args.render_only:
        started = _now()
        try:
            summary = run_all(args, budget, out)
        except KeyboardInterrupt:
            print("interrupted: finished runs are in "
                  f"{out / 'results'}; the same command continues", flush=True)
            return 130
        failed = summary["counts"]["failed"]
        _append_invocation(out, {"command": command, "started": started, "finished": _now(),
                                 "budget": budget.name, **summary})
        print(f"done in {_clock(summary['wall_seconds'])}: {summary['counts']}", flush=True)
    render(out, args.md, png)
    print(f"wrote {args.md} and {png}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
