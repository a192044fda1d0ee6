"""G: feature maps f0..f9, the size check, the feature table."""

from __future__ import annotations

import pytest
import torch

from stainadapt.errors import InputError, PluginError
from stainadapt.models.unet import FEATURE_NAMES, SegmentationNet

STRIDES = {f"f{i}": s for i, s in enumerate((2, 4, 8, 16, 32, 16, 8, 4, 2, 1))}


@pytest.fixture(scope="module")
def net18():
    return SegmentationNet("resnet18")


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_feature_maps_shapes(backbone):
    net = SegmentationNet(backbone)
    x = torch.randn(2, 3, 64, 96)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 1, 64, 96)
    assert tuple(feats) == FEATURE_NAMES
    for name, (channels, stride) in net.feature_table.items():
        assert stride == STRIDES[name]
        assert feats[name].shape == (2, channels, 64 // stride, 96 // stride), name
    enc = net.encoder.feature_info.channels()
    assert [net.feature_table[f"f{i}"][0] for i in range(5)] == enc
    assert [net.feature_table[f"f{i}"][0] for i in range(5, 10)] == [256, 128, 64, 32, 16]


def test_logits_only_by_default(net18):
    out = net18(torch.zeros(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 32, 32)


def test_features_are_the_tensors_of_the_forward_pass(net18):
    seen = {}

    def keep(key):
        def hook(module, inputs, output):
            seen[key] = inputs

        return hook

    handles = [
        net18.head.register_forward_hook(keep("head")),
        net18.decoder[0].register_forward_hook(keep("d0")),
    ]
    try:
        _, feats = net18(torch.zeros(2, 3, 64, 64), return_features=True)
    finally:
        for handle in handles:
            handle.remove()
    assert seen["head"][0] is feats["f9"]
    assert seen["d0"][0] is feats["f4"] and seen["d0"][1] is feats["f3"]


def test_feature_table_without_forward_for_resnet50():
    table = SegmentationNet("resnet50").feature_table
    assert table["f0"] == (64, 2) and table["f4"] == (2048, 32) and table["f9"] == (16, 1)


@pytest.mark.parametrize("size", [(70, 64), (64, 100)])
def test_sides_not_multiple_of_32_are_refused_helpfully(net18, size):
    with pytest.raises(InputError, match="multiple of 32") as err:
        net18(torch.zeros(1, 3, *size))
    assert "64 or 96" in str(err.value) or "96 or 128" in str(err.value)


def test_bad_rank_is_an_input_error(net18):
    with pytest.raises(InputError, match="B, C, H, W"):
        net18(torch.zeros(3, 64, 64))


def test_backbone_name_and_custom_decoder():
    net = SegmentationNet("resnet18", decoder_channels=(64, 32, 16, 16, 8))
    assert net.backbone_name == "resnet18"
    assert net.feature_table["f9"] == (8, 1)
    with pytest.raises(InputError, match="5 entries"):
        SegmentationNet("resnet18", decoder_channels=(16, 8))


def test_unknown_backbone():
    with pytest.raises(PluginError, match="neither a backbones plugin nor a timm model"):
        SegmentationNet("nonet")


def test_gradients_reach_the_encoder(net18):
    net18.zero_grad()
    net18(torch.randn(2, 3, 64, 64)).mean().backward()
    assert net18.encoder.conv1.weight.grad.abs().sum() > 0


def test_split_forward_normalises_each_part_on_its_own():
    """forward(split=k) in train mode equals two separate calls, not one mixed batch."""
    torch.manual_seed(0)
    net = SegmentationNet(backbone="resnet18").train()
    a = torch.rand(2, 3, 64, 64)
    b = torch.rand(2, 3, 64, 64) * 0.3 + 0.6  # another "stain": other batch statistics
    with torch.no_grad():
        logits, feats = net(torch.cat([a, b]), return_features=True, split=2)
        la, fa = net(a, return_features=True)
        lb, fb = net(b, return_features=True)
        mixed = net(torch.cat([a, b]))
    assert torch.allclose(logits, torch.cat([la, lb]), atol=1e-5)
    assert torch.allclose(feats["f0"], torch.cat([fa["f0"], fb["f0"]]), atol=1e-5)
    assert not torch.allclose(mixed, logits, atol=1e-3)
    assert net(a, split=2).shape == (2, 1, 64, 64)  # split >= batch: one ordinary pass
