"""Every registered discriminator passes the contract, on every built-in backbone."""

from __future__ import annotations

import functools

import pytest

from stainadapt import registry
from stainadapt.models.unet import SegmentationNet
from stainadapt.testing import check_discriminator

DISCS = registry.plugin_names("discriminators")
BACKBONES = registry.plugin_names("backbones")


@functools.cache
def table(backbone: str) -> dict[str, tuple[int, int]]:
    """G's feature table (read from timm's feature_info, no forward pass)."""
    return dict(SegmentationNet(backbone).feature_table)


@pytest.mark.parametrize("name", DISCS)
def test_contract(name):
    check_discriminator(name)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", DISCS)
def test_accepts_the_maps_of_every_backbone(name, backbone):
    check_discriminator(name, features=table(backbone), image_size=32)


@pytest.mark.parametrize(
    "spec",
    [
        "single:layer=f9",
        "single:layer=f0,weight=0.5",
        "concat:mode=pool",
        "mirrored:side=encoder",
        "mirrored:side=decoder",
        "entropy:width=8,depth=2,weight=0.5",
    ],
)
def test_contract_with_options(spec):
    check_discriminator(spec)


def test_third_party_factory_can_be_checked():
    from stainadapt.discriminators.single import create_single

    check_discriminator(lambda feats: create_single(feats, layer="f2"))
