"""Encoders by timm name, tag or hub repo; published weights from the cache; G's stem and
input normalisation through model.json, predict and both exports. Nothing downloads:
every test that could reach the network runs with sockets blocked and HF_HUB_OFFLINE."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from stainadapt import registry
from stainadapt.cli.app import app
from stainadapt.errors import InputError, PluginError
from stainadapt.export import ATOL, export_model
from stainadapt.models.backbones import choose_levels, timm_backbone
from stainadapt.models.encoders import build_encoder, parse_backbone, timm_name, weights_status
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import load_model, read_meta, save_model
from stainadapt.testing import check_discriminator, fill_hub_cache

runner = CliRunner()
HUB_MEAN, HUB_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (sockets refuse to connect) and an empty Hugging Face cache."""
    import huggingface_hub.constants as hub

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


# --------------------------------------------------------------------------- naming


def test_spec_syntax_for_timm_and_hub_names():
    assert parse_backbone("hf-hub:timm/resnet18.a1_in1k") == (
        "timm", {"hf_hub": "timm/resnet18.a1_in1k"})
    assert parse_backbone("timm:hf_hub=org/name") == ("timm", {"hf_hub": "org/name"})
    assert timm_name("timm:hf_hub=org/name") == ("hf-hub:org/name", {})
    assert timm_name("hf-hub:org/name") == ("hf-hub:org/name", {})
    assert timm_name("timm:name=resnet18") == ("resnet18", {})  # past a plugin's name
    assert timm_name("resnet18") == (None, {})  # the registered plugin first
    assert timm_name("resnet34.a1_in1k") == ("resnet34.a1_in1k", {})
    assert timm_name("convnext_atto:drop_path_rate=0.1") == (
        "convnext_atto", {"drop_path_rate": 0.1})
    for bad in ("timm:", "timm:name=a,hf_hub=b/c", "hf-hub:", "hf-hub:a/b,c=d"):
        with pytest.raises(PluginError):
            timm_name(bad)


def test_timm_names_and_tags_build_five_level_pyramids():
    for name in ("regnetx_002", "resnet34.a1_in1k", "resnet10t"):
        enc = build_encoder(name)
        assert enc.feature_info.reduction() == [2, 4, 8, 16, 32], name
        assert not enc.needs_stem


def test_unknown_name_lists_close_matches():
    with pytest.raises(PluginError, match="close matches: .*convnext_tiny") as info:
        build_encoder("convnxt_tiny")
    assert "\n" not in str(info.value)
    with pytest.raises(PluginError, match="tags it has: .*resnet34.a1_in1k"):
        build_encoder("resnet34.a1_in1kk")


def test_unknown_name_is_exit_2_from_the_cli():
    res = runner.invoke(app, ["info", "--backbone", "convnxt_tiny"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "convnext_tiny" in lines[0], res.output


def test_model_without_a_pyramid_is_one_clear_line():
    with pytest.raises(PluginError, match="no multi-scale features"):
        build_encoder("vit_tiny_patch16_224")
    with pytest.raises(PluginError, match="no multi-scale features"):
        choose_levels([16, 16, 16])


# --------------------------------------------------------------------------- the stem


def test_stride_four_pyramid_gets_a_stem_and_f0_at_stride_two():
    net = SegmentationNet("convnext_atto", decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert net.stem is not None and net.encoder_record["stem"]
    strides = [net.feature_table[f"f{i}"][1] for i in range(10)]
    assert strides == [2, 4, 8, 16, 32, 16, 8, 4, 2, 1]
    logits, feats = net(torch.zeros(1, 3, 64, 64), return_features=True)
    assert logits.shape == (1, 1, 64, 64)
    for name, (c, s) in net.feature_table.items():
        assert tuple(feats[name].shape) == (1, c, 64 // s, 64 // s), name
    # the stem is G's, not the encoder's: a frozen encoder leaves it trainable
    net.freeze_encoder()
    assert all(p.requires_grad for p in net.stem.parameters())


@pytest.mark.parametrize("disc", registry.plugin_names("discriminators"))
def test_discriminators_accept_a_stemmed_g(disc):
    table = dict(SegmentationNet("convnext_atto").feature_table)
    check_discriminator(disc, features=table, image_size=32)


# --------------------------------------------------------------------------- weights


def test_published_weights_load_from_the_cache_exactly(offline):
    source = timm.create_model("resnet10t")  # random: what a download would have put there
    path = fill_hub_cache(offline, "timm/resnet10t.c3_in1k", source.state_dict())
    enc = timm_backbone("resnet10t", pretrained="imagenet")
    expected = source.state_dict()
    for key, value in enc.state_dict().items():
        assert torch.equal(value, expected[key]), key
    status = weights_status("resnet10t")
    assert status["cached"] and status["file"] == str(path)
    assert weights_status("resnet18")["cached"] is False  # not in this cache


def test_uncached_weights_offline_are_one_line(offline):
    with pytest.raises(InputError) as info:
        timm_backbone("resnet10t", pretrained="imagenet")
    text = str(info.value)
    assert "\n" not in text
    for needle in ("timm/resnet10t.c3_in1k", "model.safetensors", "--pretrained FILE",
                   "HF_HUB_OFFLINE=1"):
        assert needle in text


def test_gated_repo_is_one_line():
    from huggingface_hub.errors import GatedRepoError

    from stainadapt.models.hub import weights_error

    exc = GatedRepoError.__new__(GatedRepoError)  # as the hub client raises it, sans HTTP
    Exception.__init__(exc, "403 Client Error\nCannot access gated repo")
    err = weights_error("resnet10t", exc)
    assert "gated" in str(err) and "\n" not in str(err) and isinstance(err, InputError)


def test_hub_model_rebuilds_offline_from_model_json(offline, tmp_path):
    """A hub model: config and weights from the cache, then predict/export need neither."""
    source = timm.create_model("resnet10t")
    config = {"architecture": "resnet10t", "num_classes": 1000,
              "pretrained_cfg": {"tag": "lab", "mean": HUB_MEAN, "std": HUB_STD,
                                 "input_size": [3, 224, 224], "first_conv": "conv1.0",
                                 "classifier": "fc"}}
    weights = fill_hub_cache(offline, "lab/tiny-resnet", source.state_dict(), config)
    net = SegmentationNet("hf-hub:lab/tiny-resnet", pretrained="imagenet",
                          decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert net.input_stats == {"mean": HUB_MEAN, "std": HUB_STD}
    save_model(tmp_path / "run", net, {"image_size": 64})
    meta = read_meta(tmp_path / "run")
    assert meta["encoder"]["timm_name"] == "resnet10t"
    assert meta["encoder"]["weights"]["sha256"] and meta["input_norm"]["mean"] == HUB_MEAN
    status = weights_status("hf-hub:lab/tiny-resnet")
    assert status["cached"] and status["mean"] == HUB_MEAN and status["tag"] == "lab"
    weights.unlink()  # the cache is gone: the run folder alone rebuilds G
    (weights.parent / "config.json").unlink()
    loaded, _ = load_model(tmp_path / "run")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def _pretrained_file(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t")
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path


def test_input_normalisation_round_trips_through_run_exports_and_predict(tmp_path):
    import hashlib

    path = _pretrained_file(tmp_path)
    net = SegmentationNet("resnet10t", pretrained=str(path),
                          decoder_channels=(32, 16, 16, 8, 8)).eval()
    plain = SegmentationNet("resnet10t", decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert plain.input_norm is None  # random init: the input goes in as it comes
    assert net.input_stats["mean"] == list(timm.create_model("resnet10t").pretrained_cfg["mean"])
    run = tmp_path / "run"
    save_model(run, net, {"image_size": 64, "threshold": 0.5})
    meta = json.loads((run / "model.json").read_text())
    assert meta["input_norm"] == net.input_stats
    assert meta["encoder"]["weights"] == {
        "source": "file", "tag": "c3_in1k", "hf_hub_id": "timm/resnet10t.c3_in1k",
        "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    loaded, _ = load_model(run)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(loaded(x), expected)
        norm, net.input_norm = net.input_norm, None
        assert not torch.allclose(expected, net(x))  # the normalisation does something
        net.input_norm = norm
    for fmt, name in (("torchscript", "g.pt"), ("onnx", "g.onnx")):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        report = export_model(run, tmp_path / name, fmt)
        assert report.max_abs_diff <= ATOL, fmt
        contract = json.loads((tmp_path / f"{name}.json").read_text())
        assert contract["input_norm_in_graph"] == net.input_stats
    model = torch.jit.load(str(tmp_path / "g.pt"))
    image = torch.randint(0, 256, (1, 3, 64, 64)).float()
    with torch.no_grad():
        assert torch.allclose(model(image), torch.sigmoid(net(image / 255.0)), atol=ATOL)
    # predict reads the same model.json: its probabilities are G's with the normalisation
    from PIL import Image

    pixels = image[0].permute(1, 2, 0).numpy().astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "a.png")
    res = runner.invoke(app, ["predict", str(tmp_path / "in"), "--model", str(run),
                              "--out", str(tmp_path / "out"), "--probabilities",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    prob = np.asarray(Image.open(tmp_path / "out" / "probabilities" / "a.png"), np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255))
    scale = 255.0 if prob.max() > 1 else 1.0
    assert np.abs(prob / scale - ref[0, 0].numpy()).max() < 0.02


def test_old_run_folders_keep_their_input_path(tmp_path):
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8)).eval()
    save_model(tmp_path / "run", net, {"image_size": 64})
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    for key in ("encoder", "input_norm"):  # a run folder written before these keys
        meta.pop(key)
    (tmp_path / "run" / "model.json").write_text(json.dumps(meta))
    loaded, _ = load_model(tmp_path / "run")
    assert loaded.input_norm is None and loaded.stem is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_info_says_levels_normalisation_and_cache(offline):
    import timm as _timm

    res = runner.invoke(app, ["info", "--backbone", "convnext_atto", "--image-size", "64",
                              "--json"])
    assert res.exit_code == 0, res.output
    enc = json.loads(res.output)["encoder"]
    assert enc["stem"] and enc["levels"] == [0, 1, 2, 3]
    assert enc["strides"] == [2, 4, 8, 16, 32] and enc["weights"]["cached"] is False
    fill_hub_cache(offline, "timm/resnet10t.c3_in1k", _timm.create_model("resnet10t").state_dict())
    res = runner.invoke(app, ["info", "--backbone", "resnet10t", "--image-size", "64"])
    assert res.exit_code == 0, res.output
    assert "levels [0, 1, 2, 3, 4] at strides [2, 4, 8, 16, 32]" in res.output
    assert "mean [0.485, 0.456, 0.406]" in res.output and "cached at" in res.output
