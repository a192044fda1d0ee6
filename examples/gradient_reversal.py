"""Gradient reversal as stainadapt's adversarial step: python examples/gradient_reversal.py [WORK].

G and every discriminator learn from one backward pass: each discriminator minimises its
BCE (source 1 / target 0; real mask 1 / predicted 0) while a reversal layer between G and
the discriminators hands G the negated gradient, so G maximises the same loss. The whole
method is :func:`grl_adv_step`; ``train(config, steps={"adv": grl_adv_step})`` uses it for
the ``adv`` epochs (docs/adaptation.md).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stainadapt.engine import steps


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; G receives the negated gradient of whatever reads it."""
    return _Reverse.apply(x, scale)


def grl_adv_step(t: Any, batch: steps.StepBatch, acc: dict[str, torch.Tensor]) -> None:
    """One step of G and every discriminator through a gradient-reversal layer."""
    with steps.autocast(t):
        logits, feats = steps.g_forward(t, batch, features=True)
        l_seg = steps.seg_term(t, batch, logits)
        probs = torch.sigmoid(logits.float())
        feats_r = {k: reverse(v) for k, v in feats.items()}
        probs_r = reverse(probs)
        loss = l_seg
        for name, disc, ddp_disc in zip(t.disc_names, t.discs, t.d_ddp, strict=True):
            view = steps.disc_view(disc, feats_r, probs_r, batch)  # inputs and labels
            for head, logit in ddp_disc(view.inputs).items():
                term = F.binary_cross_entropy_with_logits(logit.float(), view.labels)
                steps.add(acc, f"d_{name}.{head}", term)
                loss = loss + disc.weights[head] * term
    steps.add(acc, "seg", l_seg)
    steps.add(acc, "g_total", loss)
    optimisers = [t.opt_g, *t.opt_d]
    for opt in optimisers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimisers:
        steps.opt_step(t, opt, loss, acc)
    if t.ema is not None:
        t.ema.update(t.model)


if __name__ == "__main__":
    from stainadapt.config import TrainConfig
    from stainadapt.data.synth import generate
    from stainadapt.engine.trainer import train

    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="stainadapt-grl-"))
    generate(work / "data", stains=("pasm", "masson"), n=6, size=96)
    config = TrainConfig(source=str(work / "data/pasm"), target=str(work / "data/masson"),
                         mode="uda", discs=["mirrored", "shape"], backbone="resnet18",
                         image_size=64, batch_size=2, pretrain_epochs=1, disc_epochs=1,
                         adv_epochs=2, steps_per_epoch=2, samples=0, out=str(work / "run"))
    result = train(config, steps={"adv": grl_adv_step})
    print(f"trained {result.epochs} epochs with gradient reversal -> {result.run_dir}")
