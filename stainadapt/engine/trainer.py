"""The training engine: source-only, supervised DA (sda) and unsupervised DA (uda).

``Trainer(config).fit()`` is a short loop over the epochs of :mod:`.schedule`: each
epoch seeds its RNGs, runs the step function of its phase (:mod:`.steps`) over
``steps_per_epoch`` batches, validates and selects. Everything around the loop is a
callback (:mod:`.callbacks`): the run-folder writer, self-training rounds, the divergence
guard, progress bars, sample overlays and the DDP checksum. The pieces it is built from:

* :mod:`.domains` -- domain folders scanned and split, each epoch's batches;
* :mod:`.build` -- G, the discriminators, the normaliser and the optimisers;
* :mod:`.steps` -- the step of each phase (``seg``, ``disc``, ``adv``, ``self``);
* :mod:`.evaluation` -- whole-image prediction and Dice for validation;
* :mod:`.resume_rules` -- what a ``--resume`` may change.

Determinism and resuming: the crops of an epoch, the augmentation and every other random
draw depend only on ``(seed, epoch)``, so a run resumed from ``state.pt`` ends, on CPU,
with the same weights as an uninterrupted one. ``state.pt`` is written atomically at
every epoch boundary; Ctrl-C or SIGTERM stops at once and leaves the last boundary's
state to ``--resume`` from (:mod:`.interrupts`).

Several processes (``torchrun``, see :mod:`.distributed`): G and every discriminator are
wrapped in DistributedDataParallel, each network in a wrapper of its own so that the G
step averages G's gradients only and each D step its discriminator's only. Each rank
draws a different share of the epoch's crops; ``--batch-size`` is per rank. Rank 0 alone
writes the run folder and validates; the validation result is broadcast so every rank
takes the same selection decisions, and losses are averaged over ranks. State is saved
from the unwrapped modules, so a run resumes with any number of ranks.

GPU path: data and augmentation on the device, bf16 autocast (no loss scaling: bf16 has
fp32's range, and several optimisers share no scaler), channels_last, and no host sync
inside a step: losses and accuracies accumulate in device tensors read once per epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..config import TrainConfig, load_toml
from ..device import resolve_amp
from ..device import resolve_device as _resolve_device
from ..errors import InputError, ReportedInterrupt
from ..inference.evaluate import evaluate_model, load_domain_images
from ..models.batchnorm import statistics_kept_in
from ..runs import normalizer_to_meta
from ..schedule import PHASES, epoch_phases
from .build import build_augment, build_networks, fresh_ema, seed_everything
from .callbacks import Callback, SkipCounter, default_callbacks
from .callbacks.run_writer import CONFIG_FILE, METRICS_FILE
from .domains import EpochBatches, epoch_seed, load_domains, tile_resolution
from .interrupts import hold_interrupts, sigterm_as_interrupt
from .lr_schedule import GeneratorLR
from .resume_rules import check_frozen, check_resume
from .state import STATE_FILE, load_state, rng_state, set_rng_state
from .statistics import needs_statistics, recalibrate
from .steps import STEPS, StepFn, prepare_step

__all__ = ["Trainer", "TrainResult", "train", "resume", "resolve_device", "summary_table"]


def resolve_device(spec: str) -> torch.device:
    """The shared ``--device`` rule; training runs on CPU or CUDA only."""
    device = _resolve_device(spec)
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class TrainResult:
    """What ``fit`` returns: the run folder, epochs done, the selected epoch and records."""

    run_dir: Path
    epochs: int
    best_epoch: int | None
    best: dict[str, Any] | None
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0
    interrupted: bool = False


class Trainer:
    """One training run. ``Trainer(config).fit()`` trains and writes the run folder.

    ``steps`` replaces the step function of any phase (see :mod:`.steps`);
    ``callbacks`` replaces :func:`.callbacks.default_callbacks` (pass
    ``[*default_callbacks(), mine]`` to add one).
    """

    def __init__(self, config: TrainConfig, console: Any = None, progress: bool = False,
                 resume_state: dict[str, Any] | None = None,
                 steps: Mapping[str, StepFn] | None = None,
                 callbacks: list[Callback] | None = None) -> None:
        self.cfg = cfg = tile_resolution(config.validate())
        self.world = distributed.world_size()
        self.rank = distributed.rank() if self.world > 1 else 0
        self.main = self.rank == 0  # only rank 0 writes, prints and shows progress
        self.console = console if self.main else None
        self.show_progress = progress and self.main
        self.progress: Any = None  # the rich Progress while fit runs with progress bars
        self.run_dir = Path(config.out)
        self.device = distributed.local_device(resolve_device(config.device))
        self.amp = resolve_amp(config.amp, self.device)
        self.phases = epoch_phases(config)
        self.step_fns: dict[str, StepFn] = {**STEPS, **(steps or {})}
        self.callbacks = default_callbacks() if callbacks is None else list(callbacks)

        self.domains = load_domains(cfg)
        # One step consumes batch_size crops per domain on every rank.
        self.steps = cfg.steps_per_epoch or max(
            1, len(self.domains.src_train) // (cfg.batch_size * self.world))
        self.batches = EpochBatches(cfg, self.steps, self.world, self.rank, self.device)
        self.g_lr = GeneratorLR(cfg.lr_schedule, cfg.warmup_steps, self.phases, self.steps)

        nets = build_networks(cfg, self.device, self.world, resuming=resume_state is not None)
        self.model, self.discs, self.disc_names = nets.model, nets.discs, nets.disc_names
        self.normalizer = nets.normalizer
        self.opt_g, self.fused, self.opt_d = nets.opt_g, nets.fused, nets.opt_d
        self.augment = build_augment(cfg, self.device)
        self.ema: Any = fresh_ema(self.model, cfg.ema)

        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_record: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self._val_cache: dict[str, list] = {}
        # self-training (set by the SelfTraining callback): the round whose
        # pseudo-labelled target samples a ``self`` epoch trains on
        self.pseudo_round = 0
        self.pseudo: list[Any] = []
        # divergence guard: rollbacks so far, their metrics.jsonl events, skip runs
        self.rollbacks = 0
        self.events: list[dict[str, Any]] = []
        self.skips = SkipCounter()
        if resume_state is not None:
            self.load_state_dict(resume_state)
        # DDP wrappers (the modules themselves in one process). self.model and
        # self.discs stay the plain modules: state, validation and saving use those.
        self.g = distributed.wrap(self.model, self.device)
        self.d_ddp = [distributed.wrap(d, self.device) for d in self.discs]

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated, selected and saved: G's moving average if ``ema``, else G."""
        return self.model if self.ema is None else self.ema.module

    def reading_target_statistics(self) -> contextlib.AbstractContextManager[None]:
        """While open, :attr:`eval_model` normalises with the target statistics the run
        keeps (``target_statistics``; nothing changes without them): how target images
        are predicted in validation and for pseudo-labels. Eval mode reads, never updates."""
        kept = self.model.target_statistics
        if not kept:
            return contextlib.nullcontext()
        return statistics_kept_in(self.eval_model, kept, every_layer=True)

    @property
    def finished(self) -> bool:
        """Every epoch of the schedule is done."""
        return self.epoch >= len(self.phases)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything ``state.pt`` holds (see :mod:`.state`)."""
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
            "target_statistics": self.model.target_statistics,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to an epoch boundary: networks, optimisers, RNGs, records up to it."""
        if list(state.get("disc_specs", [])) != list(self.cfg.discs):
            raise InputError("state.pt was written for other discriminators than the config's")
        self.model.load_state_dict(state["model"])
        if self.model.target_statistics is not None:
            kept = state.get("target_statistics") or {}
            self.model.target_statistics = {k: v.to(self.device) for k, v in kept.items()}
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

    def meta(self) -> dict[str, Any]:
        """``model.json``'s keys that the network cannot know itself."""
        norm = None
        if self.normalizer is not None:
            norm = normalizer_to_meta(self.cfg.normalize, self.normalizer)
        return {
            "backbone": self.cfg.backbone,
            "image_size": self.cfg.image_size,
            # the resolution G works at: the tiles' own, times downsample
            "mpp": self.cfg.mpp * self.cfg.downsample if self.cfg.mpp else self.cfg.mpp,
            "downsample": self.cfg.downsample,
            "threshold": self.cfg.threshold,
            "normalizer": norm,
            "mode": self.cfg.mode,
            "discs": list(self.cfg.discs),
            "input_range": "rgb/255 (float in [0, 1], after the normaliser if any)",
        }

    # ------------------------------------------------------------------ the loop
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def fit(self, max_epochs: int | None = None) -> TrainResult:
        """Train from ``self.epoch`` to the end (or ``max_epochs`` more epochs)."""
        self._call("on_fit_start")
        start = time.perf_counter()
        end = len(self.phases) if max_epochs is None else min(len(self.phases),
                                                              self.epoch + max_epochs)
        interrupted = False
        try:
            with sigterm_as_interrupt():
                while self.epoch < end:
                    self._fit_epoch()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._call("on_fit_exit")
        if interrupted:
            if self.console is not None:
                self.console.print(
                    f"interrupted: state after epoch {self.epoch} is in "
                    f"{self.run_dir / STATE_FILE}; continue with "
                    f"stainadapt train --resume {self.run_dir}", style="yellow")
            raise ReportedInterrupt
        self._call("on_fit_end")
        result = TrainResult(
            run_dir=self.run_dir, epochs=self.epoch, best_epoch=self.best_epoch,
            best=self.best_record, records=self.records,
            skipped_steps=sum(r.get("skipped_steps", 0) for r in self.records),
            seconds=time.perf_counter() - start,
        )
        if self.console is not None:
            self.console.print(summary_table(result, self.cfg, self.domains.oracle))
        return result

    def _fit_epoch(self) -> None:
        """One epoch: train, let the callbacks keep or discard it, select, write."""
        epoch, phase = self.epoch, self.phases[self.epoch]
        self._call("on_epoch_start", epoch, phase)
        record = self.run_epoch(epoch, phase)
        discarded = False
        for cb in self.callbacks:
            discarded = cb.on_epoch_trained(self, epoch, record) or discarded
        if discarded:
            return  # rolled back: self.epoch is the last good boundary again
        hold_interrupts(True)  # the epoch's files are written whole, then stop
        record["selected"] = self._select(epoch, phase, record)
        self.records.append(record)
        self.epoch = epoch + 1
        self._call("on_epoch_end", epoch, record)
        hold_interrupts(False)  # raises KeyboardInterrupt if a signal came

    def _select(self, epoch: int, phase: str, record: dict[str, Any]) -> bool:
        """Whether ``epoch`` is the best so far (only epochs of the last phase compete)."""
        if phase != (self.phases[-1] if self.phases else "seg"):
            return False
        score = self._score(record["val"])
        if score is not None and self.cfg.select_smoothing > 0:
            score = self._smoothed(score, phase)
        if score is None or score > self.best_score:
            self.best_score = -math.inf if score is None else score
            self.best_epoch = epoch
            self.best_record = record
            return True
        return False

    def step(self, phase: str, src: dict[str, Any], tgt: dict[str, Any] | None,
             acc: dict[str, torch.Tensor]) -> None:
        """One training step of ``phase`` on a source (and target) loader batch."""
        self.step_fns[phase](self, prepare_step(self, phase, src, tgt), acc)

    def run_epoch(self, epoch: int, phase: str) -> dict[str, Any]:
        """Train one epoch of ``phase`` and validate; returns its metrics record."""
        # + rank: ranks draw different augmentations (rank 0 keeps the one-process seed)
        seed_everything(epoch_seed(self.cfg.seed, epoch, 99) + self.rank)
        self.model.train()
        for d in self.discs:
            d.train()
        dom = self.domains
        src_it = self.batches(dom.src_train, True, epoch, 0)
        tgt_it = None
        if phase == "self":
            tgt_it = self.batches(self.pseudo, True, epoch, 1, tag=self.pseudo_round)
        elif dom.tgt_train and (phase != "seg" or dom.tgt_labelled or self.cfg.fda_beta > 0):
            # (FDA: source-only steps read target crops too, for their colours)
            tgt_it = self.batches(dom.tgt_train, dom.tgt_labelled, epoch, 1)
        acc: dict[str, torch.Tensor] = {"skipped": torch.zeros((), device=self.device)}
        start = time.perf_counter()
        for step in range(self.steps):
            self.g_lr(self.opt_g, epoch, step)
            src = next(src_it)
            tgt = next(tgt_it) if tgt_it is not None else None
            self.step(phase, src, tgt, acc)
            self._call("on_step_end", step, acc)
        sums = distributed.all_reduce_mean(acc)  # one sync per epoch; mean over ranks
        skipped = int(round(sums.pop("skipped")))
        losses = {k: v / self.steps for k, v in sums.items() if not k.startswith("acc_")}
        disc_acc = {k[4:]: v / self.steps for k, v in sums.items() if k.startswith("acc_")}
        train_seconds = time.perf_counter() - start
        if self.cfg.bn_recalibration and needs_statistics(self, epoch):
            recalibrate(self)  # every rank: their models stay equal
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

    # ------------------------------------------------------------------ validation
    def _val_items(self, which: str) -> list:
        if which not in self._val_cache:
            samples = self.domains.src_val if which == "source" else self.domains.tgt_val
            self._val_cache[which] = load_domain_images(
                [s for s in samples if s.mask is not None], with_masks=True)
        return self._val_cache[which]

    def validate(self) -> dict[str, dict[str, float]]:
        """Dice and accuracy of :attr:`eval_model` on each domain's labelled validation split."""
        out: dict[str, dict[str, float]] = {}
        kw = dict(threshold=self.cfg.threshold, normalizer=self.normalizer, amp=self.amp)
        if self.domains.src_val:
            out["source"] = evaluate_model(self.eval_model, self._val_items("source"),
                                           self.device, **kw)
        if any(s.mask is not None for s in self.domains.tgt_val):
            key = "target_oracle" if self.domains.oracle else "target"
            with self.reading_target_statistics():
                out[key] = evaluate_model(self.eval_model, self._val_items("target"),
                                          self.device, **kw)
        return {k: v for k, v in out.items() if v}

    def _smoothed(self, score: float, phase: str) -> float:
        """``score`` averaged with the earlier epochs of ``phase`` (exponential moving average).

        One noisy validation epoch then cannot win the selection alone. Recomputed from
        the metrics records, so a resumed run selects as an uninterrupted one.
        """
        beta = self.cfg.select_smoothing
        earlier = [self._score(r["val"]) for r in self.records if r["phase"] == phase]
        smooth: float | None = None
        for value in [*earlier, score]:
            if value is None or not math.isfinite(value):
                continue
            smooth = value if smooth is None else beta * smooth + (1 - beta) * value
        return score if smooth is None else smooth

    def _score(self, val: dict[str, dict[str, float]]) -> float | None:
        sel = self.cfg.selection
        if sel == "last":
            return None
        key = ("source" if sel == "source"
               else ("target_oracle" if self.domains.oracle else "target"))
        return val.get(key, {}).get("dice", -math.inf)


def summary_table(result: TrainResult, cfg: TrainConfig, oracle: bool = False) -> Any:
    """A rich Table of a finished run: epochs per phase, selection, validation, D accuracy."""
    from rich.table import Table

    table = Table(title=f"{cfg.mode} run: {result.run_dir}")
    table.add_column("item")
    table.add_column("value")
    phases = epoch_phases(cfg)
    counts = [f"{p} {phases.count(p)}" for p in PHASES if p in phases]
    table.add_row("epochs", f"{result.epochs} ({', '.join(counts)})")
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


# --------------------------------------------------------------------------- entry points


def train(config: TrainConfig, console: Any = None, progress: bool = False,
          max_epochs: int | None = None, steps: Mapping[str, StepFn] | None = None
          ) -> TrainResult:
    """Train a fresh run into ``config.out`` (refuses a folder that already has a run).

    ``steps``: step functions replacing the built-in ones per phase (docs/adaptation.md).
    """
    out = Path(config.out)
    with distributed.session(resolve_device(config.device)):
        if (out / STATE_FILE).exists() or (out / METRICS_FILE).exists():
            raise InputError(f"{out}: already holds a run; use --resume {out} or another --out")
        distributed.barrier()  # every rank has checked before rank 0 writes anything
        trainer = Trainer(config, console=console, progress=progress, steps=steps)
        return trainer.fit(max_epochs=max_epochs)


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, console: Any = None,
           progress: bool = False, max_epochs: int | None = None,
           steps: Mapping[str, StepFn] | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its last epoch boundary.

    ``overrides`` (``None`` values ignored) may raise the epoch counts; any other change
    of the networks, the data or the schedule is refused (:mod:`.resume_rules`).
    A run trained with custom ``steps`` resumes with the same ``steps``.
    """
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise InputError(f"{run}: no {CONFIG_FILE}; is this a stainadapt run folder?")
    values = load_toml(run / CONFIG_FILE)
    # a config.toml without the field belongs to a run that trained without it
    values.setdefault("acquisition_jitter", 0.0)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_frozen(values, given)
    stored = TrainConfig(**{**values, "out": str(run)})
    values.update(given)
    values["out"] = str(run)
    config = TrainConfig(**values).validate()
    with distributed.session(resolve_device(config.device)):
        # Every rank reads state.pt (several nodes need the run folder on a shared
        # filesystem); rank 0 cannot rewrite it before the others have read it, since
        # finishing an epoch takes collectives with every rank.
        state = load_state(run / STATE_FILE)
        check_resume(stored, config, int(state["epoch"]))
        trainer = Trainer(config, console=console, progress=progress, resume_state=state,
                          steps=steps)
        return trainer.fit(max_epochs=max_epochs)
