"""Test-time adaptation: AdaBN and TENT in predict, evaluate and the statistics files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.inference import AdaptSettings, evaluate_model, predict_paths
from stainadapt.inference import adapt_files as adapt_files_module
from stainadapt.inference.adapt import (
    adapt_model,
    adapted_state,
    entropy_from_logits,
    read_adapted_state,
    sample_windows,
)
from stainadapt.models.batchnorm import batchnorm_layers
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import load_model, save_model

CPU = torch.device("cpu")


def _image(h: int, w: int, seed: int, glass: bool = False) -> np.ndarray:
    """Dark blobs on pink tissue; with ``glass`` the left half is bright glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (200, 150, 190)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 20)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(40, 120, 3)
    if glass:
        img[:, : w // 2] = 250
    img += rng.normal(0, 5, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _net(norm: str = "batch") -> SegmentationNet:
    torch.manual_seed(0)
    return SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8), norm=norm)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    save_model(root / "run", _net(), {"image_size": 64, "threshold": 0.5})
    save_model(root / "inst", _net("instance"), {"image_size": 64, "norm": "instance"})
    src = root / "in"
    src.mkdir()
    Image.fromarray(_image(97, 131, 1)).save(src / "a.png")
    Image.fromarray(_image(70, 150, 2, glass=True)).save(src / "b.png")
    tifffile.imwrite(src / "c.tif", _image(130, 90, 3), photometric="rgb", tile=(32, 32))
    return root


def _predict(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args), "--device", "cpu"])


def _files(folder, suffixes=(".png", ".tif")):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.suffix in suffixes}


# -- the sample ----------------------------------------------------------------------


def test_sample_is_bounded_seeded_and_skips_glass(setup, tmp_path):
    files = sorted((setup / "in").iterdir())
    w1, notes = sample_windows(files, 64, 5, seed=3)
    w2, _ = sample_windows(files, 64, 5, seed=3)
    assert w1.shape == (5, 64, 64, 3) and w1.dtype == np.uint8 and not notes
    assert np.array_equal(w1, w2)
    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((64, 200, 3), 250, np.uint8)).save(glass)
    only, notes = sample_windows([glass], 64, 4)
    assert len(only) == 0  # nothing but glass
    assert len(sample_windows([glass], 64, 9, min_tissue=0)[0]) == 4  # 4 windows cover 200 px
    # a large TIFF read window by window gives the windows of the whole-image read
    whole = sample_windows([setup / "in" / "c.tif"], 64, 6, seed=1)[0]
    streamed = sample_windows([setup / "in" / "c.tif"], 64, 6, seed=1, stream_min_pixels=0)[0]
    assert np.array_equal(whole, streamed) and len(whole) == 6  # 3 x 2 grid, padded


@pytest.fixture(scope="module")
def slide_setup(tmp_path_factory):
    """A 768 x 512 .svs at 0.5 um/px, glass on its left half, and a model at 1 um/px."""
    from stainadapt.testing.slides import write_svs

    root = tmp_path_factory.mktemp("adapt-slide")
    (root / "in").mkdir()
    save_model(root / "run", _net(), {"image_size": 64, "threshold": 0.5, "mpp": 1.0})
    write_svs(root / "in" / "s.svs", _image(512, 768, 4, glass=True), mpp=0.5, power=20)
    return root


def test_slide_sample_is_read_at_the_model_mpp_on_tissue(slide_setup):
    from stainadapt.inference.slides import plan_slide

    path = slide_setup / "in" / "s.svs"
    windows, notes = sample_windows([path], 64, 100, seed=2, model_mpp=1.0)
    assert not any("left out" in n for n in notes)
    plan = plan_slide(path, model_mpp=1.0)
    try:
        assert plan.reader.shape == (256, 384)  # the view prediction reads: 2x coarser
        tissue = [(y, x) for y in range(0, 256, 64) for x in range(0, 384, 64)
                  if plan.reader.tissue_fraction(y, x, 64) >= 0.01]
        every = {plan.view.read_box(x, y, 64, 64).tobytes() for y, x in tissue}
    finally:
        plan.close()
    # every tissue window under the prediction's tissue map, at its scale, and no other
    assert 0 < len(windows) == len(tissue) < 24
    assert {w.tobytes() for w in windows} == every
    again, _ = sample_windows([path], 64, 5, seed=2, model_mpp=1.0)
    assert np.array_equal(again, sample_windows([path], 64, 5, seed=2, model_mpp=1.0)[0])


def test_predict_adapt_bn_on_a_slide(slide_setup, tmp_path):
    path = slide_setup / "in" / "s.svs"
    for out in ("o1", "o2"):
        res = _predict(path, "--model", slide_setup / "run", "--out", tmp_path / out,
                       "--adapt", "bn", "--adapt-windows", "8")
        assert res.exit_code == 0, res.output
        assert "left out" not in res.output and "adapted the model to the inputs" in res.output
    assert _files(tmp_path / "o1", (".tif",)) == _files(tmp_path / "o2", (".tif",))
    net, _ = load_model(slide_setup / "run")
    state, meta = read_adapted_state(tmp_path / "o1" / "adapted-stats.safetensors", net)
    trained = adapted_state(net, "bn")
    assert all(not torch.equal(state[k], trained[k]) for k in state if "running_var" in k)
    assert meta["sources"] == ["s.svs"] and meta["sample"] == 8


def test_unreadable_file_is_left_out_with_a_note(setup, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    windows, notes = sample_windows([bad, setup / "in" / "a.png"], 64, 3)
    assert len(windows) == 3 and len(notes) == 1 and "bad.png" in notes[0]


# -- adaptation itself ---------------------------------------------------------------


def _windows(n: int = 6) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 255, (n, 3, 64, 64), dtype=np.uint8))


def _prepare(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def test_bn_changes_the_running_statistics_and_nothing_else():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = adapt_model(net, _windows(), AdaptSettings("bn", batch_size=4), _prepare)
    assert result.batches == 2 and result.steps == 0 and not net.training
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert stats and stats <= changed
    assert changed - stats <= {k for k in before if k.endswith("num_batches_tracked")}
    assert all(m.momentum == 0.1 for m in batchnorm_layers(net))  # restored


def test_tent_tunes_only_the_affine_terms_and_stops_at_its_bound():
    windows = _windows()
    bn = _net().eval()
    adapt_model(bn, windows, AdaptSettings("bn", batch_size=4), _prepare)
    tent = _net().eval()
    before = {k: v.clone() for k, v in tent.state_dict().items()}
    result = adapt_model(tent, windows, AdaptSettings("tent", steps=3, batch_size=4), _prepare)
    assert result.steps == 3 and len(result.losses) == 3
    after, adabn = tent.state_dict(), bn.state_dict()
    affine = {f"{n}.{p}" for n, m in tent.named_modules() if m in batchnorm_layers(tent)
              for p in ("weight", "bias")}
    for key, value in after.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, adabn[key]), key  # AdaBN's, untouched by the steps
        elif key in affine:
            continue
        else:
            assert torch.equal(value, before[key]), key
    assert any(not torch.equal(after[k], before[k]) for k in affine)
    assert all(p.requires_grad and p.grad is None for p in tent.parameters())
    assert all(m.track_running_stats for m in batchnorm_layers(tent)) and not tent.training


def test_entropy_is_the_binary_entropy():
    z = torch.tensor([-30.0, -1.0, 0.0, 2.0, 30.0])
    p = torch.sigmoid(z.double())
    want = -(p * p.log() + (1 - p) * (1 - p).log()).nan_to_num(0.0)
    assert torch.allclose(entropy_from_logits(z).double(), want, atol=1e-6)
    assert float(entropy_from_logits(torch.zeros(1))) == pytest.approx(np.log(2))


def test_evaluate_adapts_a_copy_and_leaves_the_model(setup):
    net, _ = load_model(setup / "run")
    items = [(f"i{k}", _image(64, 64, k), _image(64, 64, k)[..., 0] < 128) for k in range(3)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plain = evaluate_model(net, items, CPU)
    adapted = evaluate_model(net, items, CPU, adapt="bn")
    per_file = evaluate_model(net, items, CPU, adapt=AdaptSettings("bn", scope="file"))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert plain["n"] == adapted["n"] == per_file["n"] == 3
    assert evaluate_model(net, items, CPU, adapt="bn") == adapted  # deterministic


# -- predict -------------------------------------------------------------------------


def test_predict_adapt_bn_is_deterministic_and_saves_its_statistics(setup, tmp_path):
    for out in ("o1", "o2"):
        res = _predict(setup / "in", "--model", setup / "run", "--out", tmp_path / out,
                       "--adapt", "bn", "--probabilities")
        assert res.exit_code == 0, res.output
    assert "adapted the model to the inputs" in res.output
    assert _files(tmp_path / "o1") == _files(tmp_path / "o2")
    net, _ = load_model(setup / "run")
    state, meta = read_adapted_state(tmp_path / "o1" / "adapted-stats.safetensors", net)
    assert set(state) == set(adapted_state(net, "bn"))
    trained = adapted_state(net, "bn")
    assert all(not torch.equal(state[k], trained[k]) for k in state if "running_var" in k)
    assert meta["mode"] == "bn" and meta["sources"] == ["a.png", "b.png", "c.tif"]
    manifest = json.loads((tmp_path / "o1" / "predict.json").read_text())
    assert manifest["adapt"]["mode"] == "bn" and manifest["adapt"]["scope"] == "call"
    plain = tmp_path / "plain"
    assert _predict(setup / "in", "--model", setup / "run", "--out", plain,
                    "--probabilities").exit_code == 0
    assert _files(plain) != _files(tmp_path / "o1")  # adaptation changed the output
    assert not (plain / "predict.json").exists()

    # evaluate says how the masks were made
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "o1"), str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    # 16 of the 18 windows covering the inputs hold tissue (b.png is half glass)
    assert manifest["adapt"]["sample"] == 16
    assert "adapted at test time (bn, scope call, 16 of 64 windows, seed 0)" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "o1"), str(tmp_path / "o2"),
                                   "--json"])
    assert json.loads(res.stdout)["predict"]["adapt"]["mode"] == "bn"


def test_scope_file_adapts_each_input_and_restores_the_model(setup, tmp_path):
    out = tmp_path / "out"
    calls = []
    report = predict_paths([setup / "in"], setup / "run", out, device="cpu", adapt="bn",
                           adapt_scope="file", probabilities=True,
                           adapt_progress=lambda *a: calls.append(a))
    assert len(report.written) == 3 and not report.failed
    assert calls and calls[-1][0] == "adapting BatchNorm" and calls[-1][1] == calls[-1][2]
    stats = sorted(p.name for p in out.glob("*.safetensors"))
    assert stats == ["a.adapted.safetensors", "b.adapted.safetensors", "c.adapted.safetensors"]
    # each file's mask is what a call over that file alone gives
    alone = predict_paths([setup / "in" / "c.tif"], setup / "run", tmp_path / "alone",
                          device="cpu", adapt="bn", probabilities=True)
    assert alone.written
    assert (out / "c.tif").read_bytes() == (tmp_path / "alone" / "c.tif").read_bytes()
    assert report.adapted["scope"] == "file"


def test_adapted_stats_round_trip_without_estimating(setup, tmp_path, monkeypatch):
    first = tmp_path / "first"
    res = _predict(setup / "in", "--model", setup / "run", "--out", first, "--adapt", "tent",
                   "--adapt-steps", "2", "--adapt-windows", "4", "--probabilities")
    assert res.exit_code == 0, res.output
    net, _ = load_model(setup / "run")
    state, meta = read_adapted_state(first / "adapted-stats.safetensors", net)
    assert set(state) == set(adapted_state(net, "tent")) and meta["steps"] == 2

    def boom(*args, **kwargs):
        raise AssertionError("estimated again")

    monkeypatch.setattr(adapt_files_module, "sample_windows", boom)
    again = tmp_path / "again"
    res = _predict(setup / "in", "--model", setup / "run", "--out", again,
                   "--adapted-stats", first / "adapted-stats.safetensors", "--probabilities")
    assert res.exit_code == 0, res.output
    assert _files(first) == _files(again)
    assert not (again / "adapted-stats.safetensors").exists()
    manifest = json.loads((again / "predict.json").read_text())
    assert manifest["adapt"]["scope"] == "loaded" and manifest["adapt"]["mode"] == "tent"


def test_model_without_batchnorm_warns_and_predicts_unchanged(setup, tmp_path):
    res = _predict(setup / "in", "--model", setup / "inst", "--out", tmp_path / "a",
                   "--adapt", "bn")
    assert res.exit_code == 0, res.output
    assert res.output.count("no BatchNorm layers") == 1
    assert _predict(setup / "in", "--model", setup / "inst", "--out",
                    tmp_path / "b").exit_code == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_bad_adapted_stats_is_one_line_exit_2(setup, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"decoder.nope.running_mean": torch.zeros(3)}, str(wrong),
              metadata={"stainadapt-adapted-stats": "{}"})
    net, _ = load_model(setup / "run")
    shapes = tmp_path / "shapes.safetensors"
    save_file({k: torch.zeros(v.numel() + 1) for k, v in adapted_state(net).items()},
              str(shapes), metadata={"stainadapt-adapted-stats": "{}"})
    for bad, why in ((junk, "not a safetensors"), (wrong, "do not fit"),
                     (shapes, "has shape"), (tmp_path / "missing.safetensors", "no such")):
        res = _predict(setup / "in", "--model", setup / "run", "--out", tmp_path / "o",
                       "--adapted-stats", bad)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and str(bad.name) in lines[0] and why in lines[0], res.output
    res = _predict(setup / "in", "--model", setup / "run", "--out", tmp_path / "o",
                   "--adapt", "nope")
    assert res.exit_code == 2 and "--adapt nope" in res.output
