"""One training step per phase, over shared pieces.

A step function has the signature ``step(t, batch, acc)``: ``t`` is the
:class:`~stainadapt.engine.trainer.Trainer` (its networks, optimisers and config),
``batch`` the :class:`StepBatch` of this step, ``acc`` the epoch's running sums (device
tensors, read once per epoch, so a step never waits for the host). :data:`STEPS` maps
each phase of :mod:`.schedule` to its function; ``Trainer(config, steps={...})`` replaces
any of them (docs/adaptation.md shows a method that does).

The adversarial step:

1. G runs on ``[x_S; x_T]`` and returns logits and the feature maps f0..f9. With
   ``domain_batchnorm`` (the default) the S and T halves are separate BatchNorm batches
   (``SegmentationNet.forward(split=...)``): one mixed batch is normalised with
   statistics that fit neither stain.
2. **G update** on ``L_seg`` plus, for every discriminator head,
   ``weight * generator_adv_term`` (:mod:`.losses`: label flipping or minimax). The
   discriminators are called as plain modules with ``requires_grad`` off, so only G's
   gradients are synchronised under DDP.
3. **D update**: every discriminator sees G's outputs *detached*, through its own DDP
   wrapper and its own Adam (lr ``disc_lr``).

What each discriminator reads and answers in steps 2 and 3 comes from one place,
:func:`disc_view`.

On CUDA the steps run under bf16 autocast with no host sync: a non-finite loss skips its
optimiser's update through the fused Adam's ``found_inf`` input (the step counter does
not advance either) and is counted in ``acc["skipped"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from ..data.fourier import amplitude_swap
from .domains import prepare_batch
from .losses import generator_adv_term, seg_loss

__all__ = ["StepBatch", "DiscView", "StepFn", "STEPS", "prepare_step", "disc_view",
           "autocast", "frozen_discriminators", "g_forward", "seg_term", "update_generator",
           "update_discriminators", "opt_step", "add", "seg_step", "disc_step", "adv_step"]


@dataclass
class StepBatch:
    """One step's inputs on the device.

    ``x`` is ``[xs; xt]`` when the target takes part in this phase (``use_t``), else
    ``xs``; ``b`` is the number of source rows. ``t_labelled``: the target rows have
    masks to train on (sda, or pseudo-labels in self-training).
    """

    xs: torch.Tensor
    ys: torch.Tensor
    xt: torch.Tensor | None
    yt: torch.Tensor | None
    x: torch.Tensor
    b: int
    use_t: bool
    t_labelled: bool
    tgt_labelled: bool  # the target's own masks are used (sda)

    @property
    def real(self) -> torch.Tensor:
        """The shape discriminator's "real" set ``(R, 1, H, W)``: S masks, and T masks in sda."""
        if self.tgt_labelled and self.yt is not None:
            return torch.cat([self.ys, self.yt]).float()
        return self.ys.float()

    @property
    def domain_labels(self) -> torch.Tensor:
        """``(N,)``: 1 for each source row of ``x``, 0 for each target row."""
        dev = self.x.device
        return torch.cat([torch.ones(self.b, device=dev),
                          torch.zeros(self.x.shape[0] - self.b, device=dev)])


StepFn = Callable[[Any, StepBatch, dict[str, torch.Tensor]], None]


def prepare_step(t: Any, phase: str, src: dict[str, Any], tgt: dict[str, Any] | None
                 ) -> StepBatch:
    """Both domains' loader batches -> a :class:`StepBatch` (source first, then target)."""
    xs, ys = prepare_batch(src, t.device, t.normalizer, t.augment)
    xt = yt = None
    if tgt is not None:
        xt, yt = prepare_batch(tgt, t.device, t.normalizer, t.augment)
        if t.cfg.fda_beta > 0:  # source crops in the target's colours (data/fourier.py)
            xs = amplitude_swap(xs, xt, t.cfg.fda_beta)
            if t.device.type == "cuda":
                xs = xs.contiguous(memory_format=torch.channels_last)
    tgt_labelled = t.domains.tgt_labelled
    t_labelled = tgt_labelled or phase == "self"  # masks or pseudo-labels
    use_t = xt is not None and (phase != "seg" or t_labelled)
    x = torch.cat([xs, xt]) if use_t else xs
    return StepBatch(xs, ys, xt, yt, x, xs.shape[0], use_t, t_labelled, tgt_labelled)


@dataclass
class DiscView:
    """What one discriminator reads and the labels it is trained to answer.

    ``labels[i]`` belongs to row ``i`` of the discriminator's output. Rows from
    ``first_g`` on are G's outputs of this step: the rows G's adversarial term scores.
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    first_g: int


def disc_view(disc: Any, feats: dict[str, torch.Tensor], probs: torch.Tensor,
              batch: StepBatch) -> DiscView:
    """The input and labels of ``disc`` for G's ``feats`` and probabilities ``probs``.

    Domain discriminators read G's features and/or output space: source 1, target 0.
    The shape discriminator reads one batch ``[real masks; G's probabilities]``: real 1,
    predicted 0. G's step passes the same mixed batch, so the shape discriminator's
    BatchNorm sees the composition it is trained on; only the predicted rows enter G's
    loss.
    """
    if disc.kind == "shape":
        real = batch.real
        dev = probs.device
        labels = torch.cat([torch.ones(real.shape[0], device=dev),
                            torch.zeros(probs.shape[0], device=dev)])
        return DiscView({"mask": torch.cat([real, probs])}, labels, real.shape[0])
    return DiscView({**feats, "mask": probs}, batch.domain_labels, 0)


def autocast(t: Any) -> Any:
    """bf16 autocast on the run's device when ``amp`` asks for it, else nothing."""
    if t.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, dtype=t.amp)


@contextlib.contextmanager
def frozen_discriminators(t: Any) -> Iterator[None]:
    """``requires_grad`` off for every discriminator while G's loss is built and applied."""
    for d in t.discs:
        d.requires_grad_(False)
    yield
    for d in t.discs:
        d.requires_grad_(True)


def add(acc: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """Add a detached float32 value to the epoch's running sum ``acc[key]``."""
    value = value.detach().float()
    acc[key] = acc[key] + value if key in acc else value


def opt_step(t: Any, opt: torch.optim.Optimizer, loss: torch.Tensor,
             acc: dict[str, torch.Tensor]) -> None:
    """Apply ``opt``'s update unless ``loss`` is non-finite on any rank (then count it)."""
    # every rank skips if any rank's loss is non-finite: replicas must stay equal
    bad = distributed.all_reduce_max((~torch.isfinite(loss.detach())).float())
    acc["skipped"] = acc["skipped"] + bad
    t.skips.count(opt, bad)
    if t.fused:
        opt.found_inf = bad  # fused Adam skips the whole update when found_inf != 0
        opt.step()
        opt.found_inf = None
    elif bad.item() == 0:  # pragma: no cover - only without fused Adam
        opt.step()


def g_forward(t: Any, batch: StepBatch, features: bool
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G (its DDP wrapper) on ``batch.x``: logits ``(N, 1, H, W)`` and, if asked, f0..f9."""
    split = batch.b if (batch.use_t and t.cfg.domain_batchnorm) else None
    if features:
        return t.g(batch.x, return_features=True, split=split)
    return t.g(batch.x, split=split), {}


def seg_term(t: Any, batch: StepBatch, logits: torch.Tensor) -> torch.Tensor:
    """L_seg on the source rows, plus on the target rows when they have (pseudo-)masks.

    Pseudo-labels filtered by confidence (``self_train_keep`` < 1) leave their unsure
    pixels out of the target rows' term."""
    b = batch.b
    l_seg = seg_loss(logits[:b], batch.ys, t.cfg.dice_weight)
    if batch.use_t and batch.t_labelled:
        unsure = not batch.tgt_labelled and t.cfg.self_train_keep < 1.0
        l_seg = l_seg + seg_loss(logits[b:], batch.yt, t.cfg.dice_weight, ignore_unsure=unsure)
    return l_seg


def update_generator(t: Any, loss: torch.Tensor, l_seg: torch.Tensor,
                     acc: dict[str, torch.Tensor]) -> None:
    """Record ``seg`` and ``g_total``, back-propagate ``loss`` into G, step G's Adam and
    the moving average."""
    add(acc, "seg", l_seg)
    add(acc, "g_total", loss)
    t.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_step(t, t.opt_g, loss, acc)
    if t.ema is not None:
        t.ema.update(t.model)


def update_discriminators(t: Any, batch: StepBatch, logits: torch.Tensor,
                          feats: dict[str, torch.Tensor], acc: dict[str, torch.Tensor]) -> None:
    """``disc_steps`` BCE steps of every discriminator on G's detached outputs, towards
    ``disc_label_smoothing``-smoothed labels. Its loss and its accuracy (against the hard
    labels) are recorded from the first of them, once per G step."""
    feats_d = {k: v.detach() for k, v in feats.items()}
    probs_d = torch.sigmoid(logits.detach().float())
    smoothing = t.cfg.disc_label_smoothing
    for repeat in range(t.cfg.disc_steps):
        for name, disc, ddp_disc, opt in zip(t.disc_names, t.discs, t.d_ddp, t.opt_d,
                                             strict=True):
            with autocast(t):
                view = disc_view(disc, feats_d, probs_d, batch)
                out = ddp_disc(view.inputs)  # its own DDP wrapper: averages this D's grads
                labels = view.labels
                goal = labels * (1.0 - smoothing) + 0.5 * smoothing if smoothing else labels
                d_loss = torch.zeros((), device=batch.x.device)
                for head, logit in out.items():
                    term = F.binary_cross_entropy_with_logits(logit.float(), goal)
                    d_loss = d_loss + term
                    if repeat:
                        continue
                    add(acc, f"d_{name}.{head}", term)
                    correct = ((logit.detach().float() > 0).float() == labels).float().sum()
                    add(acc, f"acc_{name}.{head}", correct / labels.numel())
            opt.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_step(t, opt, d_loss, acc)


# ------------------------------------------------------------------ the phases


def seg_step(t: Any, batch: StepBatch, acc: dict[str, torch.Tensor]) -> None:
    """``seg`` and ``self``: G alone on L_seg."""
    with frozen_discriminators(t):
        with autocast(t):
            logits, _ = g_forward(t, batch, features=False)
            l_seg = seg_term(t, batch, logits)
        update_generator(t, l_seg, l_seg, acc)


def disc_step(t: Any, batch: StepBatch, acc: dict[str, torch.Tensor]) -> None:
    """``disc``: G frozen (eval mode, no graph), one step of every discriminator."""
    t.model.eval()
    with torch.no_grad(), autocast(t):  # plain module: no gradient to sync
        # eval mode: BatchNorm uses running statistics, so one pass (no split)
        logits, feats = t.model(batch.x, return_features=True)
    t.model.train()
    update_discriminators(t, batch, logits, feats, acc)


def adv_step(t: Any, batch: StepBatch, acc: dict[str, torch.Tensor]) -> None:
    """``adv``: one G step on L_seg + the adversarial terms, then one step of every D."""
    cfg = t.cfg
    with frozen_discriminators(t):
        with autocast(t):
            logits, feats = g_forward(t, batch, features=True)
            l_seg = seg_term(t, batch, logits)
            loss = l_seg
            probs = torch.sigmoid(logits.float())
            # plain discriminators (frozen): DDP would wait for their gradients
            for name, disc in zip(t.disc_names, t.discs, strict=True):
                view = disc_view(disc, feats, probs, batch)
                out = disc(view.inputs)
                true = view.labels
                if view.first_g:
                    out = {h: v[view.first_g:] for h, v in out.items()}
                    true = true[view.first_g:]
                for head, logit in out.items():
                    term = generator_adv_term(logit, true, cfg.adv_loss)
                    add(acc, f"adv_{name}.{head}", term)
                    loss = loss + disc.weights[head] * term
        update_generator(t, loss, l_seg, acc)
    update_discriminators(t, batch, logits, feats, acc)


#: The step function of each phase of :func:`.schedule.epoch_phases`.
STEPS: dict[str, StepFn] = {"seg": seg_step, "disc": disc_step, "adv": adv_step,
                            "self": seg_step}
