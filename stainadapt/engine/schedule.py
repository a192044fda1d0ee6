"""The paper's schedule (section 2.2) as a list of per-epoch phases.

* ``seg``   -- G alone on L_seg (the paper's s0 epochs; in sda on S and T labels,
  otherwise on S labels only);
* ``disc``  -- the discriminators alone on their BCE losses, G frozen (d0 epochs);
* ``adv``   -- alternate one G step on L_full and one step of every discriminator.

``source-only`` has no discriminators: it trains G on L_seg for ``s0 + adv`` epochs, so
it gets exactly as many G updates as the adapted runs it is compared with. ``sda`` without
discriminators is the paper's "S + T" row: G on both domains' labels, all epochs ``seg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ["PHASES", "epoch_phases"]

PHASES = ("seg", "disc", "adv")


def epoch_phases(config: TrainConfig) -> list[str]:
    """The phase of every epoch of a run, in order."""
    if config.mode == "source-only" or not config.discs:  # incl. sda as plain S + T training
        return ["seg"] * (config.pretrain_epochs + config.adv_epochs)
    return (
        ["seg"] * config.pretrain_epochs
        + ["disc"] * config.disc_epochs
        + ["adv"] * config.adv_epochs
    )
