"""Shared pieces of the reliability tests: tiny labelled domains and a tiny run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from stainadapt.testing import make_domain

#: The smallest run that still goes through every code path (resnet18, 64 px crops).
TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=2,
            device="cpu", samples=0, amp="off")


@pytest.fixture(scope="session")
def tiny_domains(tmp_path_factory) -> tuple[Path, Path]:
    """A labelled source and target domain of 4 images of 64 px each."""
    root = tmp_path_factory.mktemp("reliability-domains")
    return (make_domain(root / "s", "source", n=4, size=64),
            make_domain(root / "t", "target", n=4, size=64))
