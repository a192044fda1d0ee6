"""``stainadapt export``: ONNX and TorchScript models that agree with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.engine.checkpoint import load_model, normalizer_to_meta, save_model
from stainadapt.export import ExportedSegmenter, export_model
from stainadapt.models.unet import SegmentationNet


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    folder = tmp_path_factory.mktemp("export") / "run"
    save_model(folder, net, {"image_size": 64, "threshold": 0.4})
    return folder


def _reference(run, batch):
    net, _ = load_model(run)
    with torch.no_grad():
        return torch.sigmoid(net(batch / 255.0))


def _batch(size, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 3, size, size), generator=g).float()


def test_torchscript_agrees_with_pytorch(run, tmp_path):
    report = export_model(run, tmp_path / "g.pt", "torchscript")
    assert report.checked_with == "torch.jit.load" and report.max_abs_diff <= 1e-4
    extra = {"stainadapt.json": ""}
    model = torch.jit.load(str(tmp_path / "g.pt"), _extra_files=extra)
    contract = json.loads(extra["stainadapt.json"])
    assert contract["threshold"] == 0.4 and contract["input"]["range"].startswith("RGB 0..255")
    for size in (64, 128):  # another batch and size than the check used
        x = _batch(size)
        assert torch.allclose(model(x), _reference(run, x), atol=1e-5)
    sidecar = json.loads((tmp_path / "g.pt.json").read_text())
    assert sidecar["format"] == "torchscript" and sidecar["normalizer"] is None


def test_onnx_agrees_with_pytorch(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    report = export_model(run, tmp_path / "g.onnx", "onnx")
    assert report.checked_with == "onnxruntime" and report.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for size in (64, 160):
        x = _batch(size, seed=size)
        (y,) = session.run(["probability"], {"image": x.numpy()})
        assert y.shape == (3, 1, size, size)
        np.testing.assert_allclose(y, _reference(run, x).numpy(), atol=1e-4)
    onnx = pytest.importorskip("onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert json.loads(meta["stainadapt"])["output"]["name"] == "probability"


def test_disagreement_writes_nothing(run, tmp_path, monkeypatch):
    from stainadapt import export as mod
    from stainadapt.errors import RunFailure

    original = mod.ExportedSegmenter.forward
    calls = {"n": 0}

    def drift(self, image):  # the reference differs from what gets traced
        calls["n"] += 1
        return original(self, image) + (0.01 if calls["n"] <= 2 else 0.0)

    monkeypatch.setattr(mod.ExportedSegmenter, "forward", drift)
    with pytest.raises(RunFailure, match="disagrees"):
        export_model(run, tmp_path / "g.pt", "torchscript")
    assert not (tmp_path / "g.pt").exists()
    assert not list(tmp_path.glob(".g*"))  # no temporary left behind


def test_cli_export_and_errors(run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    )
    assert res.exit_code == 0, res.output
    assert "max |difference| from PyTorch" in res.output
    res = runner.invoke(
        app, ["export", str(run), "--format", "tflite", "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 2 and "--format tflite" in res.output
    res = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "no model.safetensors" in res.output


def test_normaliser_is_reported_not_baked(tmp_path):
    from stainadapt.registry import create

    torch.manual_seed(1)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    rng = np.random.default_rng(0)
    ref = rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
    norm = create("normalizers", "reinhard").fit(ref)
    meta = {"image_size": 64, "normalizer": normalizer_to_meta("reinhard", norm)}
    save_model(tmp_path / "run", net, meta)
    report = export_model(tmp_path / "run", tmp_path / "g.pt", "torchscript")
    assert any("reinhard normaliser" in n for n in report.notes)
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["input"]["normalised_first"] is True
    assert sidecar["normalizer"]["spec"] == "reinhard"
    # The exported graph is x / 255 -> G -> sigmoid, whatever the normaliser.
    model = torch.jit.load(str(tmp_path / "g.pt"))
    x = _batch(64)
    with torch.no_grad():
        assert torch.allclose(model(x), ExportedSegmenter(net.eval())(x), atol=1e-5)
