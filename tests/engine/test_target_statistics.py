"""Target-stain BatchNorm statistics kept apart in training (``--target-statistics``) and
used by ``predict --adapt target``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.config import TrainConfig
from stainadapt.engine.state import load_state
from stainadapt.engine.trainer import resume, train
from stainadapt.errors import InputError
from stainadapt.inference.adapt import adapted_state
from stainadapt.inference.evaluate import adapted_copy
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import TARGET_STATS, load_model
from stainadapt.testing import make_domain

runner = CliRunner()


def _net() -> SegmentationNet:
    torch.manual_seed(0)
    return SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))


def test_split_batch_keeps_each_domain_statistics_apart():
    torch.manual_seed(1)
    source = torch.rand(2, 3, 64, 64)
    target = torch.rand(2, 3, 64, 64) * 0.3 + 0.7  # another stain: other statistics
    net = _net().train()
    alone_s, alone_t = copy.deepcopy(net), copy.deepcopy(net)
    net.target_statistics = {}
    out = net(torch.cat([source, target]), split=2)
    alone_s(source)
    alone_t(target)
    # the model's own statistics saw the source half only, the store the target half only
    own, kept = adapted_state(net), net.target_statistics
    assert own.keys() == kept.keys() and len(kept) > 10
    for key, value in adapted_state(alone_s).items():
        torch.testing.assert_close(own[key], value)
    for key, value in adapted_state(alone_t).items():
        torch.testing.assert_close(kept[key], value)
    assert not torch.allclose(kept["encoder.bn1.running_mean"], own["encoder.bn1.running_mean"])
    # the outputs are those of two separate batches, as without the store
    plain = copy.deepcopy(alone_s)
    plain.load_state_dict(_net().state_dict())
    torch.testing.assert_close(out, plain(torch.cat([source, target]), split=2))
    # eval mode (prediction) never touches the store
    before = {k: v.clone() for k, v in kept.items()}
    net.eval()(torch.cat([source, target]), split=2)
    assert all(torch.equal(v, kept[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsbn")
    s = make_domain(root / "s", "source", n=4, size=64)
    t = make_domain(root / "t", "target", n=4, size=64, masks=False)
    cfg = TrainConfig(source=str(s), target=str(t), out=str(root / "run"), mode="uda",
                      discs=["mirrored"], backbone="resnet18", image_size=64, batch_size=2,
                      pretrain_epochs=1, disc_epochs=1, adv_epochs=2, steps_per_epoch=2,
                      val_fraction=0.0, samples=0, device="cpu", target_statistics=True)
    train(cfg)
    return root, cfg


def test_run_writes_target_statistics_that_load_with_the_model(run):
    root, _ = run
    path = root / "run" / TARGET_STATS
    assert path.is_file()
    model, _ = load_model(root / "run")
    kept = model.target_statistics
    assert kept is not None and kept.keys() == adapted_state(model).keys()
    own = adapted_state(model)
    assert any(not torch.equal(kept[k], own[k]) for k in kept)
    # evaluation with adapt="target" predicts with the kept statistics, on a copy
    adapted = adapted_copy(model, [], torch.device("cpu"), "target")
    for key, value in adapted_state(adapted).items():
        torch.testing.assert_close(value, kept[key])
    assert all(torch.equal(v, adapted_state(model)[k]) for k, v in own.items())


def test_resume_continues_the_target_statistics(run, tmp_path):
    root, cfg = run
    cfg2 = copy.deepcopy(cfg)
    cfg2.out = str(tmp_path / "cut")
    train(cfg2, max_epochs=3)  # stopped after the first adversarial epoch
    state = load_state(tmp_path / "cut" / "state.pt")
    assert state["target_statistics"]  # the store goes into state.pt
    resume(tmp_path / "cut")
    whole = load_model(root / "run")[0].target_statistics
    cut = load_model(tmp_path / "cut")[0].target_statistics
    for key, value in whole.items():
        torch.testing.assert_close(cut[key], value)


def test_predict_adapt_target_uses_the_kept_statistics(run, tmp_path):
    root, _ = run
    images = root / "t" / "images"
    args = ["predict", str(images), "--model", str(root / "run"), "--device", "cpu"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "kept"), "--adapt", "target"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "kept" / "predict.json").read_text())
    assert manifest["adapt"]["mode"] == "target"
    assert not (tmp_path / "kept" / "adapted-stats.safetensors").exists()  # nothing estimated
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    from stainadapt.inference.adapt_files import describe_manifest, read_predict_manifest

    line = describe_manifest(read_predict_manifest(tmp_path / "kept"))
    assert "target statistics the model kept" in line
    kept = sorted((tmp_path / "kept").glob("*.png"))
    plain = sorted((tmp_path / "plain").glob("*.png"))
    assert [p.name for p in kept] == [p.name for p in plain] and kept


def test_adapt_target_without_kept_statistics_is_one_line(tmp_path, run):
    root, _ = run
    (root / "bare").mkdir(exist_ok=True)
    model, meta = load_model(root / "run")
    from stainadapt.runs import save_model

    model.target_statistics = None
    save_model(root / "bare", model, meta)
    res = runner.invoke(app, ["predict", str(root / "t" / "images"), "--model",
                              str(root / "bare"), "--out", str(tmp_path / "o"),
                              "--device", "cpu", "--adapt", "target"])
    assert res.exit_code == 2
    assert "kept no target statistics" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("fields, message", [
    ({"target": None, "mode": "source-only", "discs": []}, "needs a target"),
    ({"norm": "instance"}, "needs BatchNorm"),
    ({"domain_batchnorm": False}, "domain_batchnorm"),
])
def test_target_statistics_config_errors(fields, message):
    base = dict(source="s", target="t", mode="uda", discs=["mirrored"], target_statistics=True)
    with pytest.raises(InputError, match=message):
        TrainConfig(**{**base, **fields}).validate()


def test_trainer_predicts_target_images_with_the_target_statistics(run):
    from stainadapt.engine.trainer import Trainer

    root, cfg = run
    cfg2 = copy.deepcopy(cfg)
    cfg2.out = str(root / "probe")
    trainer = Trainer(cfg2)
    own = adapted_state(trainer.eval_model)
    with trainer.reading_target_statistics():  # nothing kept yet: the model's own
        assert all(torch.equal(v, own[k]) for k, v in adapted_state(trainer.eval_model).items())
    trainer.model.target_statistics = load_model(root / "run")[0].target_statistics
    with trainer.reading_target_statistics():
        for key, value in adapted_state(trainer.eval_model).items():
            torch.testing.assert_close(value, trainer.model.target_statistics[key])
    # and back to the model's own afterwards
    assert all(torch.equal(v, own[k]) for k, v in adapted_state(trainer.eval_model).items())
    # the held-out diagnostics' split pass reads the target crops with them too
    probe = adapted_copy(trainer.model, [], torch.device("cpu"), "target")
    x = torch.rand(4, 3, 64, 64)
    net = trainer.model.eval()
    with torch.no_grad():
        logits, _ = net(x, return_features=True, split=2)
        torch.testing.assert_close(logits[:2], net(x[:2]))
        torch.testing.assert_close(logits[2:], probe.eval()(x[2:]))
        assert not torch.allclose(logits[2:], net(x[2:]))


def _run_export(path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(x)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_freezes_the_chosen_statistics(run, tmp_path, fmt):
    root, _ = run
    x = torch.rand(1, 3, 64, 64) * 255
    outs = {}
    for stats in ("trained", "target"):
        path = tmp_path / f"{stats}.{fmt}"
        res = runner.invoke(app, ["export", str(root / "run"), "--out", str(path),
                                  "--format", fmt, "--statistics", stats])
        assert res.exit_code == 0, res.output
        contract = json.loads(path.with_name(path.name + ".json").read_text())
        assert contract["batchnorm_statistics"] == stats
        outs[stats] = _run_export(path, fmt, x)
    model, _ = load_model(root / "run")
    with torch.no_grad():
        expected = torch.sigmoid(adapted_copy(model, [], torch.device("cpu"), "target")(x / 255))
    torch.testing.assert_close(outs["target"], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(outs["target"], outs["trained"], atol=1e-4)
    res = runner.invoke(app, ["export", str(root / "run"), "--out", str(tmp_path / "x.pt"),
                              "--format", "torchscript", "--statistics", str(tmp_path / "no")])
    assert res.exit_code == 2 and "no such statistics file" in res.output
