"""Losses of G and of the discriminators.

G's adversarial term (the ``- alpha * L_D`` of the paper's Eq. 4) is realised by
**label flipping**: instead of maximising the discriminator's BCE (which saturates once D
is confident), G minimises ``alpha * BCE(D(x), flipped label)``:

* domain discriminators: source features are scored against the target label (0) and
  target features against the source label (1), so G is pushed to make each domain look
  like the other;
* shape discriminator: G's predicted probabilities (S and T) are scored against the
  "real mask" label (1).

Both have the sign of ``-L_D`` (G is rewarded where D is wrong) and the non-saturating
gradient of the GAN literature. ``tests/engine/test_trainer_adversarial.py`` checks the
sign: with alpha > 0, the discriminators' accuracy on G's features falls compared with
alpha = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["seg_loss", "soft_dice_loss", "bce_to", "correct_count"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the batch (one number)."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """L_seg: pixel BCE on logits (+ ``dice_weight`` * soft Dice loss when > 0)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss


def bce_to(logits: torch.Tensor, label: float) -> torch.Tensor:
    """BCE of discriminator logits ``(B,)`` against a constant label (0 or 1)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def correct_count(logits: torch.Tensor, label: float) -> torch.Tensor:
    """How many logits fall on the side of ``label`` (a device tensor; no host sync)."""
    pred = (logits.detach().float() > 0).float()
    return (pred == label).float().sum()
