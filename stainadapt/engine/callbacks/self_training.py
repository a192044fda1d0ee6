"""Self-training rounds (``self_train_rounds``, after the schedule; not in the paper).

At the first epoch of round R, G's model (the moving average if ``ema``; after AdaBN on
the split with ``self_train_adapt = "bn"``) labels the target *training* split, p >
threshold, into ``RUN/pseudo/round-R/`` (rank 0 writes, every rank reads). With
``self_train_keep`` < 1 only each class's most confident pixels are labels and the rest
are unsure, left out of the loss (:mod:`stainadapt.data.pseudo_labels`). G restarts
from that model with a fresh Adam (at the current learning rate) and a fresh average,
then trains on L_seg over the source labels and those pseudo-labels. The target's own
masks are never read. A resumed run reads the round's labels back from the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ... import distributed
from ...data.pseudo_labels import UNSURE_PIXEL
from ...errors import InputError
from ...inference.evaluate import predict_probs
from ...schedule import self_train_round
from ..build import fresh_ema, make_adam
from .base import Callback

__all__ = ["SelfTraining", "pseudo_folder", "restart_generator"]


class _Images(Sequence):
    """The samples' images, read when indexed: AdaBN over a split never holds the whole
    split in memory."""

    def __init__(self, samples: list[Any]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        from ...data.io import read_image

        return read_image(self.samples[i].image)


def pseudo_folder(run_dir: Path, round_: int) -> Path:
    """Where round ``round_``'s pseudo-labels are (one PNG per target training image)."""
    return run_dir / "pseudo" / f"round-{round_}"


def restart_generator(t: Any) -> None:
    """G from its averaged weights, a fresh Adam (current lr) and a fresh average."""
    if t.ema is not None:
        t.model.load_state_dict(t.ema.module.state_dict())
        t.ema = fresh_ema(t.model, t.cfg.ema)
    # the same groups at their current lr (keeps a rollback's lowering and the schedule's
    # base_lr), with empty moments
    keep = ("params", "lr", "base_lr")
    groups = [{k: g[k] for k in keep if k in g} for g in t.opt_g.param_groups]
    t.opt_g, t.fused = make_adam(groups, float(groups[0]["lr"]), (t.cfg.beta1, t.cfg.beta2),
                                 t.device)
    t.skips.clear()


class SelfTraining(Callback):
    """Enters each ``self`` epoch's round; sets ``t.pseudo`` and ``t.pseudo_round``.

    The loop trains a ``self`` epoch's target stream on ``t.pseudo`` (the target training
    samples with their pseudo-label as mask). A round's labelling summary (round, images,
    folder, mean foreground) joins the metrics line of the round's first epoch.
    """

    def __init__(self) -> None:
        self.summary: dict[str, Any] | None = None

    def on_epoch_start(self, t: Any, epoch: int, phase: str) -> None:
        self.summary = self._enter_round(t, epoch) if phase == "self" else None

    def on_epoch_trained(self, t: Any, epoch: int, record: dict[str, Any]) -> bool:
        if self.summary:
            record["pseudo"] = self.summary
        return False

    def _enter_round(self, t: Any, epoch: int) -> dict[str, Any] | None:
        """Label and restart at a round's first epoch; later epochs only reload labels
        if needed (a resumed run). Returns the labels' summary when just written."""
        round_, first = self_train_round(t.cfg, epoch) or (0, False)
        if not round_ or (not first and t.pseudo_round == round_):
            return None
        folder = pseudo_folder(t.run_dir, round_)
        summary = None
        if first:
            summary = self._write_labels(t, folder, round_) if t.main else None
            distributed.barrier()  # the labels are on disk before any rank reads them
            restart_generator(t)
        t.pseudo = [replace(s, mask=folder / f"{s.name}.png") for s in t.domains.tgt_train]
        missing = [s.mask for s in t.pseudo if not s.mask.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: pseudo-label of self-training round {round_} is "
                             "missing; the run folder is incomplete (start a new run)")
        t.pseudo_round = round_
        t.batches.drop_tagged()
        return summary

    @torch.no_grad()
    def _write_labels(self, t: Any, folder: Path, round_: int) -> dict[str, Any]:
        from ...data.io import read_image, write_image
        from ...data.pseudo_labels import (
            class_balanced_cuts,
            compact_probs,
            encode_pseudo_label,
        )
        from ...inference.evaluate import adapted_copy

        samples = t.domains.tgt_train
        cfg = t.cfg
        model = t.eval_model
        was_training = model.training
        model.eval()
        task = None
        if t.progress is not None:
            task = t.progress.add_task(f"self-training round {round_}: labelling the target",
                                       total=len(samples), loss="")
        labeller = model
        if cfg.self_train_adapt == "bn":  # AdaBN on the split it labels
            labeller = adapted_copy(model, _Images(samples), t.device, "bn", t.normalizer)
        guesses = []  # one byte a pixel (compact_probs), written out once the cuts are known
        with t.reading_target_statistics():  # the target as the run predicts it
            for s in samples:
                prob = predict_probs(labeller, read_image(s.image), t.device, t.normalizer,
                                     t.amp)
                guesses.append(compact_probs(prob.float().cpu().numpy(), cfg.threshold))
                if task is not None:
                    t.progress.update(task, advance=1)
        fg_min, bg_max = class_balanced_cuts(guesses, cfg.threshold, cfg.self_train_keep)
        foreground = unsure = 0.0
        for s, guess in zip(samples, guesses, strict=True):
            label = encode_pseudo_label(guess, cfg.threshold, fg_min, bg_max)
            foreground += float((label == 255).mean())
            unsure += float((label == UNSURE_PIXEL).mean())
            write_image(folder / f"{s.name}.png", label)
        model.train(was_training)
        n = max(len(samples), 1)
        return {"round": round_, "images": len(samples), "folder": str(folder),
                "foreground": round(foreground / n, 4), "unsure": round(unsure / n, 4),
                "keep": cfg.self_train_keep, "adapt": cfg.self_train_adapt,
                "fg_min": round(fg_min, 4), "bg_max": round(bg_max, 4)}
