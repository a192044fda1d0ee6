"""Backbone plugins: the contract, local weights, and no downloads."""

from __future__ import annotations

import pytest
import torch

from stainadapt import registry
from stainadapt.errors import InputError, PluginError
from stainadapt.models.backbones import timm_backbone
from stainadapt.testing import check_backbone


@pytest.mark.parametrize("name", registry.plugin_names("backbones"))
def test_every_backbone_meets_the_contract(name):
    check_backbone(name, image_size=32)


def test_create_through_the_registry():
    model = registry.create("backbones", "resnet18")
    assert model.feature_info.channels() == [64, 64, 128, 256, 512]
    assert model.backbone_name == "resnet18"


def test_in_chans_option():
    check_backbone("resnet18:in_chans=1", image_size=32, in_chans=1)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_local_file_loads(tmp_path, suffix):
    source = timm_backbone("resnet18")
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    loaded = registry.create("backbones", "resnet18", pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_adapts_first_conv_to_in_chans(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm_backbone("resnet18").state_dict().items()}, str(path)
    )
    model = timm_backbone("resnet18", pretrained=str(path), in_chans=1)
    assert model.conv1.weight.shape[1] == 1


def test_pretrained_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        timm_backbone("resnet18", pretrained=str(tmp_path / "nope.safetensors"))


def test_pretrained_wrong_weights_say_what_does_not_fit(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(timm_backbone("resnet18").state_dict(), path)
    with pytest.raises(InputError, match="do not fit"):
        timm_backbone("resnet50", pretrained=str(path))


def test_unknown_backbone_is_a_plugin_error():
    with pytest.raises(PluginError, match="resnet18"):
        registry.create("backbones", "resnet9000")


def test_timm_model_without_stride_two_level_asks_for_a_stem():
    model = timm_backbone("convnext_atto")
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.needs_stem


def test_timm_model_without_a_pyramid_is_refused():
    with pytest.raises(PluginError, match="no multi-scale features"):
        timm_backbone("vit_tiny_patch16_224")
