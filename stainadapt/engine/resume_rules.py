"""What a resumed run may change: the epoch counts may grow, nothing else of the schedule.

A resumed run continues the same experiment: its networks, data, splits and the epochs
already trained stay what they were. Growing the phases not yet reached (more
adversarial epochs, another self-training round) extends it; anything else would make
the epochs on disk and the ones still to come two different runs, so it is refused with
one :class:`InputError` line naming the field.
"""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig
from ..errors import InputError
from ..schedule import epoch_phases, self_train_round

__all__ = ["FROZEN_ON_RESUME", "GROWABLE_ON_RESUME", "FIXED_ON_RESUME", "check_frozen",
           "check_resume"]

#: Fields that define the networks and the data.
FROZEN_ON_RESUME = ("mode", "discs", "backbone", "image_size", "source", "target", "normalize",
                    "norm", "pretrained")
#: Epoch counts: a resumed run may raise them.
GROWABLE_ON_RESUME = ("pretrain_epochs", "disc_epochs", "adv_epochs", "self_train_rounds",
                      "self_train_epochs", "steps")
#: The rest of the schedule (``selection``: the effective ``--select`` rule).
FIXED_ON_RESUME = ("steps_per_epoch", "batch_size", "selection", "val_fraction", "seed",
                   "freeze_encoder_epochs",
                   "lr_schedule", "warmup_steps", "encoder_lr_mult", "foreground_share",
                   "select_smoothing", "bn_recalibration", "fda_beta",
                   "self_train_keep", "self_train_adapt", "disc_steps",
                   "disc_label_smoothing")


def check_frozen(stored: dict[str, Any], given: dict[str, Any]) -> None:
    """Refuse an override of a network or data field (``given``: the non-None flags)."""
    for key in FROZEN_ON_RESUME:
        if key in given and given[key] != stored.get(key):
            raise InputError(f"--resume: {key} cannot change in a resumed run "
                             f"(run has {stored.get(key)!r}, got {given[key]!r})")


def check_resume(old: TrainConfig, new: TrainConfig, epoch: int) -> None:
    """Refuse a schedule change of a run resumed after ``epoch`` epochs.

    ``old`` is the run's stored config, ``new`` the one it would continue with.
    """
    for key in FIXED_ON_RESUME:
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            raise InputError(f"--resume: {key} cannot change in a resumed run (run has "
                             f"{before!r}, got {after!r}); only epoch counts may grow")
    for key in GROWABLE_ON_RESUME:
        before, after = getattr(old, key), getattr(new, key)
        if after < before:
            raise InputError(f"--resume: {key} cannot shrink in a resumed run (run has "
                             f"{before}, got {after}); epoch counts may only grow")
    old_phases, new_phases = epoch_phases(old), epoch_phases(new)
    for e in range(min(epoch, len(old_phases))):
        was = (old_phases[e], self_train_round(old, e))
        now = (new_phases[e] if e < len(new_phases) else None, self_train_round(new, e))
        if was != now:
            raise InputError(
                f"--resume: the new epoch counts change epoch {e + 1}, already trained "
                f"({old_phases[e]}); only phases the run has not finished may grow")
