"""Does stainadapt find glomeruli on real biopsies? One benchmark on real PAS tiles.

Part (a), in-domain: the labelled tiles are cut into 4 folds by name (each tile is tested
once; 18 train and 6 test tiles for the 24 AIDPATH tiles). On every fold the same budget
of optimiser steps trains

* ``recipe``: ``stainadapt train`` with its default recipe (``stainadapt.recipes``);
* ``smp``: a plain segmentation_models_pytorch loop with the same encoder (random crops,
  flips, Adam 1e-3, BCE + Dice) -- what a practitioner writes first;
* ``paper``: ``--recipe paper`` (the paper's plain recipe), on fold 0 only.

Part (b), synthetic PASM -> real PAS without target labels: the first three quarters of
the real tiles (by name) are the unlabelled target, the last quarter the test tiles. Per
seed: ``source-only`` (the recipe on synthetic PASM tiles), ``macenko`` (that model on
test tiles Macenko-normalised to a synthetic PASM tile), ``fda`` (the source-only recipe
with ``--fda-beta``: each synthetic crop takes the low-frequency amplitudes of an
unlabelled real crop), ``fda-st`` (two rounds of self-training from the fda model, the
target labelled after AdaBN: ``--self-train-adapt bn``), ``uda`` (mirrored + shape at the
paper's weights, from the source model), ``uda-st`` (two rounds of self-training from the
UDA model) and ``supervised``
(the recipe on the labelled target tiles: the upper bound). Figures are mean ± std over
seeds. Five more rows evaluate, without any training, the models of five of them with
test-time BatchNorm statistics (``predict --adapt bn``, scope call: one set of statistics
over the test tiles): ``source-only+adabn``, ``fda+adabn``, ``fda-st+adabn``,
``uda+adabn`` and ``supervised+adabn`` (a BatchNorm upper bound is only an upper bound
with statistics that fit the test tiles). BatchNorm recipes (``--set norm=batch``) add
``uda-dsbn`` (the UDA run with ``--target-statistics``: the target's BatchNorm
statistics kept apart) and ``uda-dsbn+target`` (that model predicting with them,
``predict --adapt target``).

Each model predicts the whole test tiles (the predictor's whole-image path) and is scored
by per-tile Dice; a run's figure is the mean over its test tiles. Finished runs are
skipped, so an interrupted benchmark resumes.

    python benchmarks/real_tissue.py ../shared/data/real-pas-aidpath --out runs/real-tissue
    python benchmarks/real_tissue.py ../shared/data/real-pas-aidpath --part b --seeds 3

``--budget full`` is the long version for a GPU; ``--set key=value`` overrides a training
field of the ``recipe`` rows (e.g. ``--set foreground_share=0``, ``--set
backbone=convnext_tiny``), ``--pretrained FILE`` starts the recipe rows' encoders from a
local weights file and ``--pretrained imagenet`` from the encoder's published weights
(timm's Hugging Face cache; docs/encoders.md). ``--adapt bn`` (or ``tent``) adds, for
each recipe row of part (a), a row ``recipe+adabn`` (``recipe+tent``): the same model
evaluated after test-time adaptation over the fold's test tiles; ``--adapt tta`` adds
``recipe+tta``, the same model scored on the mean of the four flips (``predict --tta``).
Test-time adaptation changes BatchNorm models only; the ``real`` recipe's default G
normalises per image (``--set norm=batch`` for BatchNorm), and a record's ``bn_layers``
says how many layers were adapted. The Markdown summary goes to ``--md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Budget", "BUDGETS", "folds", "main"]


@dataclass(frozen=True)
class Budget:
    """The size of every run of the benchmark."""

    name: str
    backbone: str = "resnet18"
    # the side a crop covers on the stored tiles: the recipe rows crop
    # image_size / downsample pixels of tiles seen that many times coarser
    image_size: int = 256
    batch_size: int = 4
    steps: int = 600
    steps_per_epoch: int = 10
    n_folds: int = 4
    # part (b): the adaptation schedule after the source model, and the synthetic source
    disc_epochs: int = 2
    adv_epochs: int = 15
    self_train_rounds: int = 2
    self_train_epochs: int = 6
    synth_n: int = 48
    synth_size: int = 256


BUDGETS = {
    "quick": Budget("quick"),
    "full": Budget("full", backbone="resnet34", steps=4000, steps_per_epoch=50),
    "tiny": Budget("tiny", image_size=64, batch_size=2, steps=4, steps_per_epoch=2,
                   disc_epochs=1, adv_epochs=1, self_train_rounds=1, self_train_epochs=1,
                   synth_n=4, synth_size=64),
}


def folds(names: list[str], n_folds: int) -> list[list[str]]:
    """``n_folds`` consecutive chunks of the sorted names (the test tiles of each fold)."""
    names = sorted(names)
    size = len(names) // n_folds
    if size < 1:
        raise SystemExit(f"{len(names)} labelled tiles cannot make {n_folds} folds")
    return [names[k * size:(k + 1) * size] if k < n_folds - 1 else names[k * size:]
            for k in range(n_folds)]


def _link_domain(data: Path, names: list[str], dest: Path) -> Path:
    """A domain folder (images/ + masks/) of ``names`` from ``data``, as links."""
    from stainadapt.data.folders import scan_domain

    if (dest / "DONE").is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    by_name = {s.name: s for s in scan_domain(data, require_masks=True)}
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    for name in names:
        s = by_name[name]
        for src, sub in ((s.image, "images"), (s.mask, "masks")):
            target = dest / sub / Path(src).name
            try:
                os.symlink(Path(src).resolve(), target)
            except OSError:
                shutil.copyfile(src, target)
    (dest / "DONE").write_text("\n".join(names) + "\n")
    return dest


#: The rows ``--only`` may name, per part.
ROWS = {"a": ("recipe", "smp", "paper"),
        "b": ("source-only", "source-only+adabn", "macenko", "uda", "uda+adabn", "fda",
              "fda+adabn", "fda-st", "fda-st+adabn", "supervised", "supervised+adabn",
              "uda-st", "uda-dsbn", "uda-dsbn+target")}

#: Row-name suffix of a model evaluated with test-time adaptation (``--adapt``).
ADAPT_SUFFIX = {"bn": "+adabn", "tent": "+tent", "tta": "+tta"}


def _score(model: Any, data: Path, names: list[str], device: str,
           normalizer: Any = None, adapt: str | None = None) -> dict[str, Any]:
    """Per-tile Dice of ``model`` on the whole tiles ``names`` of ``data``.

    ``adapt`` (``"bn"``/``"tent"``): a copy of the model adapts first to all the tiles
    (scope call); the record then says how many BatchNorm layers it adapted. ``"tta"``:
    the model itself, scored on the mean of the four flips (``predict --tta``).
    """
    from stainadapt.data.folders import scan_domain
    from stainadapt.device import resolve_device
    from stainadapt.inference import adapted_copy, load_domain_images, predict_probs
    from stainadapt.metrics import segmentation_metrics
    from stainadapt.models.batchnorm import batchnorm_layers

    dev = resolve_device(device)
    samples = [s for s in scan_domain(data, require_masks=True) if s.name in set(names)]
    items = load_domain_images(samples, with_masks=True)
    extra: dict[str, Any] = {}
    tta = adapt == "tta"
    if tta:
        extra = {"adapt": adapt, "bn_layers": 0}
    elif adapt:
        model = adapted_copy(model, [image for _, image, _ in items], dev, adapt, normalizer)
        extra = {"adapt": adapt, "bn_layers": len(batchnorm_layers(model))}
    per = {}
    for name, image, mask in items:
        prob = predict_probs(model, image, dev, normalizer=normalizer, tta=tta).cpu().numpy()
        per[name] = round(float(segmentation_metrics(prob > 0.5, mask)["dice"]), 4)
    return {"dice": float(np.mean(list(per.values()))), "per_tile": per, **extra}


def _train_recipe(recipe: str, train_dir: Path, run_dir: Path, budget: Budget, seed: int,
                  device: str, overrides: dict[str, Any], pretrained: str | None,
                  **fields: Any) -> Any:
    """Train (unless finished) a source-only run of ``recipe`` on ``train_dir``; its model.

    ``fields`` replace the source-only schedule (an adaptation run from ``init``).
    """
    from stainadapt.engine.trainer import resume, train
    from stainadapt.recipes import training_config, training_fields
    from stainadapt.runs import load_model

    if (run_dir / "state.pt").is_file():  # interrupted: continue it
        resume(run_dir)
        (run_dir / "state.pt").unlink()
    elif not (run_dir / "model.safetensors").is_file():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        flags = dict(source=str(train_dir), mode="source-only", out=str(run_dir),
                     backbone=budget.backbone, image_size=budget.image_size,
                     batch_size=budget.batch_size, steps=budget.steps,
                     steps_per_epoch=budget.steps_per_epoch, disc_epochs=0, adv_epochs=0,
                     val_fraction=0.0, select="last", samples=0, seed=seed, device=device,
                     pretrained=pretrained)
        flags.update(overrides)
        flags.update(fields)
        # the budget's image_size is the side a crop covers on the stored tiles: a recipe
        # that trains on coarser tiles crops image_size / downsample pixels of them
        down = float(flags.get("downsample") or training_fields(recipe).get("downsample", 1))
        if "image_size" not in overrides and "image_size" not in fields:
            flags["image_size"] = max(32, round(budget.image_size / down / 32) * 32)
        train(training_config(recipe, None, flags))
        (run_dir / "state.pt").unlink(missing_ok=True)  # finished: the model is what counts
    return load_model(run_dir, device)[0]


def _train_smp(train_dir: Path, budget: Budget, seed: int, device: str) -> Any:
    """The plain loop: smp Unet, random crops, flips, Adam 1e-3, BCE + Dice."""
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    from stainadapt.data.dataset import CropDataset
    from stainadapt.data.folders import scan_domain
    from stainadapt.device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = smp.Unet(budget.backbone, encoder_weights=None, classes=1).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = CropDataset(scan_domain(train_dir, require_masks=True), budget.image_size,
                       length=budget.steps * budget.batch_size, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_size=budget.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    net.train()
    for batch in loader:
        x = batch["image"].to(dev).float() / 255
        y = batch["mask"].to(dev)
        if torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand(()) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        logits = net(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.max_stride = 32
    return net.eval()


def run_part_a(args: argparse.Namespace, budget: Budget) -> list[dict[str, Any]]:
    data = Path(args.data)
    from stainadapt.data.folders import scan_domain

    names = [s.name for s in scan_domain(data, require_masks=True)]
    chunks = folds(names, budget.n_folds)
    methods = args.only.split(",") if args.only else list(ROWS["a"])
    records = []
    for method in methods:
        fold_ids = [0] if method == "paper" else (args.folds or range(budget.n_folds))
        for k in fold_ids:
            tag = f"{method}{args.tag if method == 'recipe' else ''}-fold{k}"
            path = args.out / "results" / f"{tag}.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
                print(f"{tag}: done before, Dice {records[-1]['dice']:.3f}")
                continue
            test = chunks[k]
            train_dir = _link_domain(data, [n for n in names if n not in test],
                                     args.out / "data" / f"fold{k}-train")
            started = time.perf_counter()
            if method == "smp":
                model = _train_smp(train_dir, budget, args.seed, args.device)
            else:
                recipe = "paper" if method == "paper" else args.recipe
                model = _train_recipe(recipe, train_dir, args.out / "runs" / tag, budget,
                                      args.seed, args.device, args.overrides, args.pretrained)
            rec = {"method": method, "tag": tag, "fold": k, "test": test, "seed": args.seed,
                   "budget": budget.__dict__, "overrides": args.overrides,
                   "seconds": round(time.perf_counter() - started, 1),
                   **_score(model, data, test, args.device)}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec, indent=1) + "\n")
            records.append(rec)
            print(f"{tag}: Dice {rec['dice']:.3f} ({rec['seconds']:.0f} s)", flush=True)
            if method == "recipe" and args.adapt:
                records.append(_adapted_row(args, budget, data, rec, model))
        if method == "recipe" and args.adapt:  # rows trained before: adapt their models too
            done = {r["tag"] for r in records}
            for k in fold_ids:
                tag = f"{method}{args.tag}-fold{k}"
                base = next((r for r in records if r["tag"] == tag), None)
                wanted = f"{method}{args.tag}{ADAPT_SUFFIX[args.adapt]}-fold{k}"
                if base is not None and wanted not in done:
                    records.append(_adapted_row(args, budget, data, base, None))
    return records


def _adapted_row(args: argparse.Namespace, budget: Budget, data: Path, base: dict[str, Any],
                 model: Any) -> dict[str, Any]:
    """The record of ``base``'s recipe model evaluated with test-time adaptation."""
    tag = base["tag"].replace("-fold", f"{ADAPT_SUFFIX[args.adapt]}-fold")
    path = args.out / "results" / f"{tag}.json"
    if path.is_file():
        rec = json.loads(path.read_text())
        print(f"{tag}: done before, Dice {rec['dice']:.3f}")
        return rec
    if model is None:
        from stainadapt.runs import load_model

        model = load_model(args.out / "runs" / base["tag"], args.device)[0]
    started = time.perf_counter()
    rec = {**{k: base[k] for k in ("fold", "test", "seed", "budget", "overrides")},
           "method": base["method"] + ADAPT_SUFFIX[args.adapt], "tag": tag,
           **_score(model, data, base["test"], args.device, adapt=args.adapt)}
    rec["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{tag}: Dice {rec['dice']:.3f} ({rec['bn_layers']} BatchNorm layers adapted)",
          flush=True)
    return rec


def _link_images(data: Path, names: list[str], dest: Path) -> Path:
    """An unlabelled domain folder (images/ only) of ``names``: the target never has masks."""
    if not (dest / "DONE").is_file():
        full = _link_domain(data, names, dest.with_name(dest.name + "-labelled"))
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(full / "images", dest / "images", symlinks=True)
        (dest / "DONE").write_text("\n".join(names) + "\n")
    return dest


def run_part_b(args: argparse.Namespace, budget: Budget) -> list[dict[str, Any]]:
    """Synthetic PASM -> real PAS: the rows of part (b) for seeds
    ``args.first_seed..args.seeds-1``."""
    from stainadapt.data.folders import scan_domain
    from stainadapt.data.io import read_image
    from stainadapt.data.synth import generate
    from stainadapt.recipes import PAPER_QUICK, training_fields
    from stainadapt.registry import create

    data = Path(args.data)
    names = sorted(s.name for s in scan_domain(data, require_masks=True))
    n_test = max(1, len(names) // budget.n_folds)
    target_names, test = names[:-n_test], names[-n_test:]
    synth = args.out / f"synth-pasm-n{budget.synth_n}-s{budget.synth_size}"
    if not (synth / "README.txt").is_file():
        generate(synth, stains=("pasm",), n=budget.synth_n, size=budget.synth_size)
    source = synth / "pasm"
    target = _link_images(data, target_names, args.out / "data" / "target")
    labelled = args.out / "data" / "target-labelled"
    reference = read_image(sorted((source / "images").iterdir())[0])
    runs = args.out / "runs-b"
    unlabelled = dict(target=str(target), steps=0, pretrain_epochs=0)
    records = []

    def row(method: str, seed: int, run: str, train_dir: Path, normalizer: Any = None,
            adapt: str | None = None, **fields: Any) -> None:
        """Score ``run``'s model (trained first unless finished) as ``method``."""
        assert method in ROWS["b"], f"{method}: add it to ROWS, which --only checks"
        if args.only and method not in args.only.split(","):
            return
        path = args.out / "results-b" / f"{method}-seed{seed}.json"
        if path.is_file():
            records.append(json.loads(path.read_text()))
            return
        started = time.perf_counter()
        model = _train_recipe(args.recipe, train_dir, runs / f"{run}-seed{seed}", budget, seed,
                              args.device, args.overrides, args.pretrained, **fields)
        rec = {"method": method, "tag": method, "seed": seed, "test": test,
               "budget": budget.__dict__, "seconds": round(time.perf_counter() - started, 1),
               **_score(model, data, test, args.device, normalizer, adapt)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1) + "\n")
        records.append(rec)
        print(f"(b) {method} seed {seed}: Dice {rec['dice']:.3f} ({rec['seconds']:.0f} s)",
              flush=True)

    macenko = create("normalizers", "macenko")
    macenko.fit(reference)
    batchnorm = {**training_fields(args.recipe), **args.overrides}.get("norm", "batch") == "batch"
    for seed in range(args.first_seed, args.seeds):
        row("source-only", seed, "source-only", source)
        row("source-only+adabn", seed, "source-only", source, adapt="bn")
        row("macenko", seed, "source-only", source, normalizer=macenko)
        row("uda", seed, "uda", source, mode="uda", discs=list(PAPER_QUICK.uda_discs),
            init=str(runs / f"source-only-seed{seed}"), disc_epochs=budget.disc_epochs,
            adv_epochs=budget.adv_epochs, **unlabelled)
        row("uda+adabn", seed, "uda", source, adapt="bn")
        # FDA: the source crops take the target's low-frequency amplitudes (no D)
        row("fda", seed, "fda", source, fda_beta=args.fda_beta, target=str(target))
        row("fda+adabn", seed, "fda", source, adapt="bn")
        # self-training from the fda model, labelling the target after AdaBN
        row("fda-st", seed, "fda-st", source, init=str(runs / f"fda-seed{seed}"),
            fda_beta=args.fda_beta, self_train_rounds=budget.self_train_rounds,
            self_train_epochs=budget.self_train_epochs, self_train_keep=args.st_keep,
            self_train_adapt="bn", **unlabelled)
        row("fda-st+adabn", seed, "fda-st", source, adapt="bn")
        row("supervised", seed, "supervised", labelled)
        row("supervised+adabn", seed, "supervised", labelled, adapt="bn")
        row("uda-st", seed, "uda-st", source, init=str(runs / f"uda-seed{seed}"),
            self_train_rounds=budget.self_train_rounds,
            self_train_epochs=budget.self_train_epochs, **unlabelled)
        if batchnorm:  # target statistics kept apart (train --target-statistics)
            row("uda-dsbn", seed, "uda-dsbn", source, mode="uda",
                discs=list(PAPER_QUICK.uda_discs), init=str(runs / f"source-only-seed{seed}"),
                disc_epochs=budget.disc_epochs, adv_epochs=budget.adv_epochs,
                target_statistics=True, **unlabelled)
            row("uda-dsbn+target", seed, "uda-dsbn", source, adapt="target")
    return records


def summary(records: list[dict[str, Any]], over: str = "folds") -> str:
    """A Markdown table: mean ± std over folds (or seeds) per method (and tag)."""
    groups: dict[str, list[float]] = {}
    for r in records:
        groups.setdefault(r["tag"].rsplit("-fold", 1)[0], []).append(r["dice"])
    lines = [f"| method | {over} | Dice mean ± std | per {over[:-1]} |", "|---|---|---|---|"]
    for name, dices in groups.items():
        lines.append(f"| {name} | {len(dices)} | {np.mean(dices):.3f} ± {np.std(dices):.3f} "
                     f"| {', '.join(f'{d:.3f}' for d in dices)} |")
    return "\n".join(lines) + "\n"


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="labelled real tiles (images/ + masks/)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    p.add_argument("--out", type=Path, default=Path("runs/real-tissue"))
    p.add_argument("--only", default=None,
                   help="comma-separated: recipe, smp, paper (part a); row names (part b)")
    p.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")], default=None)
    p.add_argument("--recipe", default="real", help="training recipe of the recipe rows")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="KEY=VALUE: a training field of the recipe rows (repeatable)")
    p.add_argument("--tag", default="", help="suffix of the recipe rows' names")
    p.add_argument("--pretrained", default=None,
                   help="encoder weights of the recipe rows: a local file, or imagenet")
    p.add_argument("--part", choices=["a", "b"], default="a",
                   help="a: in-domain folds; b: synthetic PASM -> real PAS, no target labels")
    p.add_argument("--seed", type=int, default=0, help="part (a)'s seed")
    p.add_argument("--adapt", choices=sorted(ADAPT_SUFFIX), default=None,
                   help="part (a): also evaluate each recipe row with test-time adaptation "
                   "(tta: flips only)")
    p.add_argument("--fda-beta", type=float, default=0.25,
                   help="part (b): the band of the fda rows (train --fda-beta)")
    p.add_argument("--st-keep", type=float, default=1.0,
                   help="part (b): the fda-st rows' share of pseudo-labelled pixels kept "
                   "(train --self-train-keep)")
    p.add_argument("--seeds", type=int, default=3, help="part (b): seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="part (b): start at this seed (one process per seed can share --out)")
    p.add_argument("--device", default="auto")
    p.add_argument("--md", type=Path, default=None, help="Markdown summary output")
    args = p.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"{args.data}: no images/ folder (the labelled real tiles)", file=sys.stderr)
        return 2
    unknown = [n for n in (args.only or "").split(",") if n and n not in ROWS[args.part]]
    if unknown:
        print(f"--only {unknown[0]}: not a row of part ({args.part}); its rows are "
              f"{', '.join(ROWS[args.part])}", file=sys.stderr)
        return 2
    args.overrides = _overrides(args.overrides)
    from stainadapt.device import resolve_device

    args.device = str(resolve_device(args.device))  # "auto" once, for every run and load
    budget = BUDGETS[args.budget]
    if args.part == "a":
        text = summary(run_part_a(args, budget))
    else:
        text = summary(run_part_b(args, budget), over="seeds")
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(f"# Real tissue, part ({args.part})\n\n`{' '.join(sys.argv)}`"
                           f"\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
