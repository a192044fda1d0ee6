"""Losses of G and of the discriminators.

G's adversarial term (the ``- alpha * L_D`` of the paper's Eq. 4) comes in two forms,
chosen with ``adv_loss`` (see :func:`generator_adv_term`):

``flip`` (default) is **label flipping**, the non-saturating form of the GAN literature:
G minimises ``alpha * BCE(D(x), flipped label)``:

* domain discriminators: source features are scored against the target label (0) and
  target features against the source label (1), so G is pushed to make each domain look
  like the other;
* shape discriminator: G's predicted probabilities (S and T) are scored against the
  "real mask" label (1).

``minimax`` is the paper's equation read literally: G minimises
``- alpha * BCE(D(x), true label)``, i.e. maximises the discriminator's own loss (what a
gradient-reversal layer does). Its gradient fades where D is confidently right -- and
the domain discriminators are right 80-99 % of the time here -- so G hears little.

Both have the sign of ``-L_D`` (G is rewarded where D is wrong);
``tests/engine/test_trainer_adversarial.py`` checks the sign for both: with alpha > 0,
the discriminators' accuracy on G's features falls compared with alpha = 0.

Label flipping is the default: with S and T normalised as separate BatchNorm batches
(``TrainConfig.domain_batchnorm``) G does not collapse under it, and it is the form whose
discriminators change G at all; minimax's gradient is too weak while the discriminators
win. The margins between the two are small on the synthetic stains: run both
(``--adv-loss``) on your data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ADV_LOSSES

__all__ = ["seg_loss", "soft_dice_loss", "bce_to", "correct_count", "generator_adv_term",
           "ADV_LOSSES"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft Dice over the batch (one number); only ``valid`` pixels count if given."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    if valid is not None:
        prob, target = prob * valid, target * valid
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0,
             ignore_unsure: bool = False) -> torch.Tensor:
    """L_seg: pixel BCE on logits (+ ``dice_weight`` * soft Dice loss when > 0).

    ``ignore_unsure``: ``target`` is a pseudo-label whose negative pixels are unsure
    (:mod:`stainadapt.data.pseudo_labels`); both terms are taken over the other pixels
    only (a batch with none gives 0, with no host sync).
    """
    valid = None
    if ignore_unsure:
        valid = (target >= 0).float()
        target = target.float().clamp(min=0.0)
        pixel = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        loss = (pixel * valid).sum() / valid.sum().clamp(min=1.0)
    else:
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target, valid=valid)
    return loss


def generator_adv_term(logits: torch.Tensor, true_labels: torch.Tensor,
                       kind: str = "flip") -> torch.Tensor:
    """G's adversarial term for one discriminator head (before its weight alpha).

    ``true_labels`` are what the discriminator is trained to answer (source 1 / target 0;
    real mask 1 / predicted 0). ``minimax``: ``-BCE(logits, true)``; ``flip``:
    ``BCE(logits, 1 - true)``. Both fall as the discriminator gets it wrong.
    """
    logits = logits.float()
    if kind == "minimax":
        return -F.binary_cross_entropy_with_logits(logits, true_labels)
    if kind == "flip":
        return F.binary_cross_entropy_with_logits(logits, 1.0 - true_labels)
    raise ValueError(f"adv_loss must be one of {', '.join(ADV_LOSSES)}, got {kind!r}")


def bce_to(logits: torch.Tensor, label: float) -> torch.Tensor:
    """BCE of discriminator logits ``(B,)`` against a constant label (0 or 1)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def correct_count(logits: torch.Tensor, label: float) -> torch.Tensor:
    """How many logits fall on the side of ``label`` (a device tensor; no host sync)."""
    pred = (logits.detach().float() > 0).float()
    return (pred == label).float().sum()
