"""Seeded train/validation splits of a domain folder, one rule for every caller.

Training, the demo and the benchmarks all hold out validation images with
:func:`split_samples`; :func:`domain_splits` names the convention that the source splits
with ``seed`` and the target with ``seed + 1``, so a caller that scores a run on the
images it held out never re-derives the seeds. :func:`run_splits` and :func:`held_out`
take the run's config itself (its ``val_fraction`` and ``seed``), so a scorer follows the
run it scores.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

__all__ = ["split_samples", "domain_splits", "run_splits", "held_out", "SplitConfig",
           "SOURCE_STREAM", "TARGET_STREAM"]

#: Offsets added to the run's seed for each domain's split.
SOURCE_STREAM = 0
TARGET_STREAM = 1


def split_samples(samples: list[Any], val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train/val split of one domain (same seed and files -> same split).

    Samples are ordered by name first, so the split does not depend on directory order.
    At least one image stays on each side when ``val_fraction > 0`` and there are two.
    """
    order = sorted(range(len(samples)), key=lambda i: samples[i].name)
    random.Random(f"stainadapt-split-{seed}").shuffle(order)
    n_val = int(round(len(samples) * val_fraction))
    ok = val_fraction > 0 and len(samples) >= 2
    n_val = min(max(n_val, 1), len(samples) - 1) if ok else 0
    val = sorted((samples[i] for i in order[:n_val]), key=lambda s: s.name)
    train = sorted((samples[i] for i in order[n_val:]), key=lambda s: s.name)
    return train, val


def domain_splits(samples: list[Any], val_fraction: float, seed: int,
                  domain: str) -> tuple[list, list]:
    """``split_samples`` with the run's seed offset for ``domain`` (``"source"``/``"target"``)."""
    offsets = {"source": SOURCE_STREAM, "target": TARGET_STREAM}
    if domain not in offsets:
        raise ValueError(f"domain must be 'source' or 'target', not {domain!r}")
    return split_samples(samples, val_fraction, seed + offsets[domain])


class SplitConfig(Protocol):
    """What a split needs of a run's config (``TrainConfig`` has both)."""

    val_fraction: float
    seed: int


def run_splits(samples: list[Any], cfg: SplitConfig, domain: str) -> tuple[list, list]:
    """The (train, val) split the trainer makes of ``domain`` for the run ``cfg``."""
    return domain_splits(samples, cfg.val_fraction, cfg.seed, domain)


def held_out(samples: list[Any], cfg: SplitConfig, domain: str) -> list:
    """The validation images the run ``cfg`` held out of ``domain``: where it is scored."""
    return run_splits(samples, cfg, domain)[1]
