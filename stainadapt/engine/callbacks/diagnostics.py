"""Is the adversarial term teaching G? Held-out discriminator accuracy and gradient norms.

The training accuracies in ``disc_acc`` are measured on the batch each discriminator has
just been trained on, so they flatter it. After every ``disc`` and ``adv`` epoch this
callback measures, on a fixed held-out set of crops (the validation images of each
domain, or the training images under another seed when a domain has no validation
split):

* ``disc_heldout``: each discriminator head's accuracy on source and target crops it
  never trained on (for the shape discriminator: real masks against G's predictions);
* ``grad_norm``: the L2 norm of the gradient that each head's weighted adversarial term
  sends into G's parameters, beside the segmentation loss's (``seg``). A head whose norm
  is orders of magnitude below ``seg`` does not move G.

Both are measured with G and the discriminators in eval mode (BatchNorm running
statistics are read, never updated; a run that keeps target statistics reads those for
the target crops, as its predictions on the target do) under a forked RNG, so a run
trains exactly as without them. At the end of a run, a head whose held-out accuracy sat at chance
(0.45-0.55) or at certainty (>= 0.95) for every adversarial epoch is named in one warning
line: in neither regime does its adversarial term teach G.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..domains import epoch_seed, prepare_batch
from ..losses import generator_adv_term, seg_loss
from ..steps import StepBatch, disc_view
from .base import Callback

__all__ = ["AdversarialDiagnostics", "CHANCE", "CERTAINTY", "stuck_heads"]

#: Held-out accuracies inside this band count as chance.
CHANCE: tuple[float, float] = (0.45, 0.55)
#: Held-out accuracies at or above this count as certainty.
CERTAINTY = 0.95
_STREAM = 17  # the held-out crops' seed stream, apart from the training streams


def stuck_heads(records: list[dict[str, Any]]) -> dict[str, str]:
    """Heads whose held-out accuracy sat at chance or at certainty in every ``adv`` epoch.

    Returns ``{head: "chance" | "certainty"}``; empty when there were no adversarial
    epochs with diagnostics.
    """
    series: dict[str, list[float]] = {}
    for r in records:
        if r.get("phase") == "adv":
            for head, value in (r.get("disc_heldout") or {}).items():
                series.setdefault(head, []).append(float(value))
    stuck: dict[str, str] = {}
    lo, hi = CHANCE
    for head, values in series.items():
        if values and all(lo <= v <= hi for v in values):
            stuck[head] = "chance"
        elif values and all(v >= CERTAINTY for v in values):
            stuck[head] = "certainty"
    return stuck


class AdversarialDiagnostics(Callback):
    """Adds ``disc_heldout`` and ``grad_norm`` to the records of ``disc``/``adv`` epochs."""

    def __init__(self, crops_per_domain: int | None = None) -> None:
        self.crops_per_domain = crops_per_domain
        self._held: StepBatch | None = None

    def on_fit_start(self, t: Any) -> None:
        self._held = None

    def on_epoch_trained(self, t: Any, epoch: int, record: dict[str, Any]) -> bool:
        if not t.main or not t.discs or record["phase"] not in ("disc", "adv"):
            return False
        if not t.domains.tgt_train:
            return False
        with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
            batch = self._batch(t)
            record["disc_heldout"], record["grad_norm"] = measure(t, batch)
        return False

    def on_fit_end(self, t: Any) -> None:
        if t.console is None:
            return
        stuck = stuck_heads(t.records)
        if stuck:
            listing = ", ".join(f"{head} at {where}" for head, where in sorted(stuck.items()))
            t.console.print(
                f"warning: held-out discriminator accuracy sat {listing} in every "
                "adversarial epoch: no adversarial signal reached G (disc_heldout and "
                "grad_norm in metrics.jsonl; docs/metrics.md)", style="yellow", soft_wrap=True)

    def _batch(self, t: Any) -> StepBatch:
        """The fixed held-out crops of both domains, built once per ``fit``."""
        if self._held is None:
            n = self.crops_per_domain or 2 * t.cfg.batch_size
            dom = t.domains
            src = dom.src_val or dom.src_train
            tgt = dom.tgt_val or dom.tgt_train
            xs, ys = _crops(t, src, n, with_masks=True)
            xt, yt = _crops(t, tgt, n, with_masks=dom.tgt_labelled
                            and all(s.mask is not None for s in tgt))
            x = torch.cat([xs, xt])
            self._held = StepBatch(xs, ys, xt, yt, x, xs.shape[0], True, False,
                                   yt is not None)
        return self._held


def _crops(t: Any, samples: list[Any], n: int, with_masks: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    from ...data.dataset import CropDataset

    ds = CropDataset(samples, t.cfg.image_size, length=n,
                     seed=epoch_seed(t.cfg.seed, 0, _STREAM), with_masks=with_masks,
                     foreground_share=t.cfg.foreground_share,
                     downsample=t.cfg.downsample)
    from torch.utils.data import default_collate

    return prepare_batch(default_collate([ds[i] for i in range(n)]), t.device, t.normalizer,
                         None)


def measure(t: Any, batch: StepBatch) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out accuracy of every discriminator head and the gradient norms into G.

    Returns ``(accuracy, grad_norm)``: ``accuracy[name.head]`` in [0, 1];
    ``grad_norm["seg"]`` and ``grad_norm[name.head]`` (the head's weighted term).
    """
    model = t.model
    was_training = model.training
    model.eval()
    disc_modes = [d.training for d in t.discs]
    for d in t.discs:
        d.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        # target crops with the target statistics when the run keeps them
        split = batch.b if batch.use_t and model.target_statistics else None
        logits, feats = model(batch.x, return_features=True, split=split)
        probs = torch.sigmoid(logits.float())
        norms = {"seg": _grad_norm(seg_loss(logits[:batch.b], batch.ys, t.cfg.dice_weight),
                                   params)}
        accuracy: dict[str, float] = {}
        for name, disc in zip(t.disc_names, t.discs, strict=True):
            disc.requires_grad_(False)
            try:
                view = disc_view(disc, feats, probs, batch)
                out = disc(view.inputs)
                for head, logit in out.items():
                    logit = logit.float()
                    right = ((logit.detach() > 0).float() == view.labels).float().mean()
                    accuracy[f"{name}.{head}"] = float(right)
                    g_logit, g_true = logit[view.first_g:], view.labels[view.first_g:]
                    term = disc.weights[head] * generator_adv_term(g_logit, g_true,
                                                                   t.cfg.adv_loss)
                    norms[f"{name}.{head}"] = _grad_norm(term, params)
            finally:
                disc.requires_grad_(True)
    finally:
        model.train(was_training)
        for d, mode in zip(t.discs, disc_modes, strict=True):
            d.train(mode)
    return accuracy, norms


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    total = sum(float(g.float().pow(2).sum()) for g in grads if g is not None)
    value = math.sqrt(total)
    return value if math.isfinite(value) else float("nan")
