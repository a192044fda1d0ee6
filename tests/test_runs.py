"""Run-folder model files: round trip, refusals, normaliser meta."""

from __future__ import annotations

import json

import pytest
import torch

from stainadapt.errors import InputError
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import load_model, normalizer_from_meta, save_model

DEC = (32, 16, 16, 8, 8)


@pytest.fixture
def net():
    torch.manual_seed(1)
    return SegmentationNet("resnet18", decoder_channels=DEC).eval()


def test_round_trip(tmp_path, net):
    save_model(
        tmp_path, net, {"image_size": 64, "threshold": 0.4, "mode": "uda", "discs": ["shape"]}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "model.json").read_text())
    for key in ("backbone", "image_size", "threshold", "decoder_channels", "normalizer",
                "stainadapt_version", "mode", "discs"):  # fmt: skip
        assert key in meta
    assert meta["backbone"] == "resnet18" and meta["decoder_channels"] == list(DEC)
    loaded, meta2 = load_model(tmp_path)
    assert meta2 == meta and not loaded.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    # the JSON path or the weights path work as well as the folder
    load_model(tmp_path / "model.safetensors")


def test_unknown_backbone_refused(tmp_path, net):
    save_model(tmp_path, net, {"image_size": 64})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["backbone"] = "resnet9000"
    meta.pop("encoder")  # with its encoder record a run rebuilds whatever the name
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="model.json: unknown backbone 'resnet9000'.*close"):
        load_model(tmp_path)


def test_missing_model_refused(tmp_path):
    with pytest.raises(InputError, match="no model.safetensors; is this a stainadapt run folder"):
        load_model(tmp_path)


def test_mismatched_weights_refused(tmp_path, net):
    save_model(tmp_path, net, {"image_size": 64})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["decoder_channels"] = [64, 32, 16, 16, 8]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not fit"):
        load_model(tmp_path)


def test_corrupt_files_refused(tmp_path, net):
    save_model(tmp_path, net, {"image_size": 64})
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(tmp_path)
    save_model(tmp_path, net, {"image_size": 64})
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable safetensors"):
        load_model(tmp_path)


def test_normalizer_meta_none():
    assert normalizer_from_meta(None) is None
