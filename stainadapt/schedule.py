"""The paper's schedule (section 2.2) as a list of per-epoch phases.

* ``seg``   -- G alone on L_seg (the paper's s0 epochs; in sda on S and T labels,
  otherwise on S labels only);
* ``disc``  -- the discriminators alone on their BCE losses, G frozen (d0 epochs);
* ``adv``   -- alternate one G step on L_full and one step of every discriminator;
* ``self``  -- self-training (``self_train_rounds`` rounds of ``self_train_epochs``
  epochs, after everything else; not in the paper): G on L_seg over S labels and the
  target's pseudo-labels, which G's model wrote at the start of the round.

``source-only`` has no discriminators: it trains G on L_seg for ``s0 + adv`` epochs, so
it gets exactly as many G updates as the adapted runs it is compared with. ``sda`` without
discriminators is the paper's "S + T" row: G on both domains' labels, all epochs ``seg``.

Config and engine both read it, so it sits below both and imports neither: a run's
:class:`~stainadapt.config.TrainConfig` is read only through the fields of
:class:`ScheduleFields`.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["PHASES", "ScheduleFields", "epoch_phases", "self_train_round"]

PHASES = ("seg", "disc", "adv", "self")


class ScheduleFields(Protocol):
    """The fields of a run configuration that decide its schedule."""

    mode: str
    discs: list[str]
    pretrain_epochs: int
    disc_epochs: int
    adv_epochs: int
    self_train_rounds: int
    self_train_epochs: int


def epoch_phases(config: ScheduleFields) -> list[str]:
    """The phase of every epoch of a run, in order."""
    self_train = ["self"] * (config.self_train_rounds * config.self_train_epochs)
    if config.mode == "source-only" or not config.discs:  # incl. sda as plain S + T training
        return ["seg"] * (config.pretrain_epochs + config.adv_epochs) + self_train
    return (
        ["seg"] * config.pretrain_epochs
        + ["disc"] * config.disc_epochs
        + ["adv"] * config.adv_epochs
        + self_train
    )


def self_train_round(config: ScheduleFields, epoch: int) -> tuple[int, bool] | None:
    """``(round, first epoch of the round?)`` of a ``self`` epoch (rounds count from 1)."""
    first = len(epoch_phases(config)) - config.self_train_rounds * config.self_train_epochs
    if config.self_train_rounds == 0 or epoch < first:
        return None
    k = epoch - first
    return k // config.self_train_epochs + 1, k % config.self_train_epochs == 0
