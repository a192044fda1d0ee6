"""``stainadapt export``: ONNX and TorchScript models that agree with PyTorch.

With a normaliser the exported graph is the trace-friendly twin of the run's normaliser
followed by G; the tests compare it with the eager normaliser (uint8 in and out) + G on
synthetic stained tiles, a near-blank tile (the pass-through path) and sizes, batches
and aspect ratios the export never saw.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data.synth import make_tile, tile_rng
from stainadapt.export import ATOL_NORMALIZED, IMAGE_ATOL, ExportedSegmenter, export_model
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import (
    load_model,
    normalizer_from_meta,
    normalizer_to_meta,
    save_model,
)


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


NORMALIZERS = (
    "reinhard",
    # a small sample, so 64 px windows already take the stratified-subsample path
    "macenko:max_samples=1024",
    "vahadane:max_samples=2048,nmf_samples=512",
)


def _tiles(h, w, n, seed):
    """``n`` synthetic stained tiles ``(n, 3, h, w)`` uint8 (cropped from square ones)."""
    stains = ("pasm", "masson", "pas")
    side = max(h, w)
    out = [make_tile(stains[i % 3], side, tile_rng(seed, stains[i % 3], i))[0] for i in range(n)]
    return torch.from_numpy(np.stack(out)[:, :h, :w]).permute(0, 3, 1, 2).contiguous()


def _near_blank(h, w, seed, dark_specks):
    """Slide glass with 0.5 % specks; ``dark_specks``: tissue-dark (under 1 %: still blank)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((232, 230, 236), 3, (h, w, 3)), 0, 255)
    specks = rng.random((h, w)) < 0.005
    colours = rng.integers(40, 200, (int(specks.sum()), 3))
    if not dark_specks:
        colours[:, 0] = 250
    img[specks] = colours
    return torch.from_numpy(img.round().astype(np.uint8)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module", params=NORMALIZERS)
def norm_run(request, tmp_path_factory):
    from stainadapt.registry import create

    spec = request.param
    torch.manual_seed(1)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    ref = make_tile("masson", 64, tile_rng(7, "masson", 3))[0]
    norm = create("normalizers", spec).fit(ref)
    folder = tmp_path_factory.mktemp("export-norm") / "run"
    save_model(folder, net, {"image_size": 64, "normalizer": normalizer_to_meta(spec, norm)})
    return spec, folder


def _eager(run, images):
    """The PyTorch pipeline: eager normaliser on uint8, then G; (normalised, probs)."""
    import warnings

    from stainadapt.normalizers.base import TissueWarning

    net, meta = load_model(run)
    norm = normalizer_from_meta(meta["normalizer"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TissueWarning)
        normalised = norm(images).float()
        return normalised, ExportedSegmenter(net.eval())(normalised)


def _exported_runner(path, fmt):
    """``images (float) -> (probabilities, normalised)`` for the exported file."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["probability", "normalized"]

        def run(x):
            p, n = session.run(["probability", "normalized"], {"image": x.numpy()})
            return torch.from_numpy(p), torch.from_numpy(n)

        return run
    model = torch.jit.load(str(path))

    def run_script(x):
        with torch.no_grad():
            return model(x), model.normalize(x)

    return run_script


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_normaliser_baked_in_agrees_with_pytorch(norm_run, fmt, tmp_path):
    spec, run = norm_run
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"g.{fmt}"
    report = export_model(run, out, fmt)
    assert report.baked_in and report.normalizer == spec
    assert report.max_abs_diff <= ATOL_NORMALIZED and report.image_mean_abs_diff <= IMAGE_ATOL
    assert report.image_max_abs_diff <= 1.0  # rounding at .5 only
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["normalizer_baked_in"] is True
    assert sidecar["input"]["normalised_first"] is False
    assert sidecar["normalizer"]["spec"] == spec
    exported = _exported_runner(out, fmt)
    # Batches, sizes and an aspect ratio the export's example and check never used.
    cases = [
        torch.cat([_tiles(64, 64, 3, seed=21), _near_blank(64, 64, 3, dark_specks=False)]),
        _tiles(96, 128, 1, seed=22),
        torch.cat([_near_blank(128, 96, 4, dark_specks=False), _tiles(128, 96, 2, seed=23)]),
    ]
    for images in cases:
        ref_norm, ref_prob = _eager(run, images)
        prob, normalised = exported(images.float())
        assert prob.shape == (images.shape[0], 1, *images.shape[2:])
        diff = (normalised - ref_norm).abs()
        assert float(diff.max()) <= 1.0
        assert float(diff.mean(dim=(1, 2, 3)).max()) <= IMAGE_ATOL
        assert float((prob - ref_prob).abs().max()) <= ATOL_NORMALIZED
        # The normaliser did something to the tissue and passed the blank tiles through.
        for image, out_image in zip(images.float(), normalised, strict=True):
            blank = float((image.amax(dim=0) <= 205).float().mean()) < 0.01
            moved = float((out_image - image).abs().mean())
            assert (moved == 0.0) if blank else (moved > 1.0), (blank, moved)


def test_near_blank_with_dark_specks_passes_through(norm_run, tmp_path):
    """Under 1 % tissue-dark pixels: statistics are computed, then the image is passed."""
    spec, run = norm_run
    out = tmp_path / "g.pt"
    export_model(run, out, "torchscript", check=False)
    model = torch.jit.load(str(out))
    # seed 29: Vahadane's NMF stain vectors collapse onto one colour there (a singular
    # 2x2 system, once a LinAlgError in the eager normaliser): a degenerate estimate,
    # passed through by both the eager normaliser and the exported twin
    images = torch.cat([_near_blank(64, 64, s, dark_specks=True) for s in (5, 6, 29)])
    assert torch.equal(model.normalize(images.float()), images.float())
    ref_norm, ref_prob = _eager(run, images)
    assert torch.equal(ref_norm, images.float())
    assert float((model(images.float()) - ref_prob).abs().max()) <= ATOL_NORMALIZED


def test_check_catches_a_wrong_normaliser(norm_run, tmp_path, monkeypatch):
    from stainadapt.errors import RunFailure
    from stainadapt.normalizers import exportable

    _, run = norm_run
    original = exportable.ExportableNormalizer.forward

    def brighter(self, image):  # what gets traced differs from the eager normaliser
        return (original(self, image) + 2.0).clamp(0, 255)

    monkeypatch.setattr(exportable.ExportableNormalizer, "forward", brighter)
    with pytest.raises(RunFailure, match="normalised image difference"):
        export_model(run, tmp_path / "g.pt", "torchscript")
    assert not (tmp_path / "g.pt").exists()


def test_no_normalizer_exports_g_alone(norm_run, tmp_path):
    spec, run = norm_run
    report = export_model(run, tmp_path / "g.pt", "torchscript", normalizer=False)
    assert not report.baked_in and report.image_mean_abs_diff is None
    assert any(f"{spec} normaliser, left out" in n for n in report.notes)
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["input"]["normalised_first"] is True and not sidecar["normalizer_baked_in"]
    model = torch.jit.load(str(tmp_path / "g.pt"))
    net, _ = load_model(run)
    x = _batch(64)
    with torch.no_grad():
        assert torch.allclose(model(x), ExportedSegmenter(net.eval())(x), atol=1e-5)


def test_cli_reports_the_normaliser_figures(norm_run, tmp_path):
    spec, run = norm_run
    if not spec.startswith("reinhard"):
        pytest.skip("one normaliser is enough for the CLI text")
    res = CliRunner().invoke(
        app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    )
    assert res.exit_code == 0, res.output
    assert f"normaliser baked in: {spec}" in res.output
    assert "normalised images: max |difference|" in res.output


def test_jacobi_matches_eigh():
    from stainadapt.normalizers.exportable import jacobi_eigh3

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    a = a @ a.transpose(1, 2)
    a[0] = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))  # already diagonal
    a[1] = torch.eye(3, dtype=torch.float64) * 2  # all eigenvalues equal
    vals, vecs = jacobi_eigh3(a)
    ref_vals, ref_vecs = torch.linalg.eigh(a)
    assert torch.allclose(vals, ref_vals, atol=1e-10)
    assert torch.allclose(vecs @ torch.diag_embed(vals) @ vecs.transpose(1, 2), a, atol=1e-10)
    # distinct eigenvalues: the same vectors up to sign
    cos = (vecs[2:] * ref_vecs[2:]).sum(dim=1).abs()
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-8)


def test_a_subclass_of_a_builtin_inherits_its_twin():
    from stainadapt.normalizers import Macenko
    from stainadapt.normalizers.exportable import exportable_normalizer
    from stainadapt.normalizers.macenko import ExportableMacenko

    class Tweaked(Macenko):
        pass

    assert isinstance(exportable_normalizer(Tweaked()), ExportableMacenko)
