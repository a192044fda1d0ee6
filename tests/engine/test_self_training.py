"""Self-training rounds after the schedule (``self_train_rounds``): tiny runs on CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from stainadapt.config import TrainConfig
from stainadapt.data.io import read_image, read_mask
from stainadapt.engine.callbacks.self_training import restart_generator
from stainadapt.engine.state import load_state
from stainadapt.engine.trainer import Trainer, resume, train
from stainadapt.errors import InputError
from stainadapt.inference import predict_probs
from stainadapt.models.unet import SegmentationNet
from stainadapt.schedule import epoch_phases, self_train_round
from stainadapt.testing import make_domain

TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=2,
            pretrain_epochs=1, disc_epochs=1, adv_epochs=1, device="cpu", samples=0,
            self_train_rounds=2, self_train_epochs=2, ema=0.5)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    source = make_domain(root / "s", "source", n=5)
    target = make_domain(root / "t", "target", n=5, masks=False)  # nothing to peek at
    return source, target


def _cfg(out, domains, **kw) -> TrainConfig:
    s, t = domains
    values = dict(TINY, source=str(s), target=str(t), out=str(out), mode="uda",
                  discs=["shape"])
    values.update(kw)
    return TrainConfig(**values)


def test_schedule_appends_rounds_after_everything_else():
    cfg = TrainConfig(source="s", target="t", mode="uda", discs=["shape"], pretrain_epochs=2,
                      disc_epochs=1, adv_epochs=1, self_train_rounds=2, self_train_epochs=3)
    assert epoch_phases(cfg) == ["seg"] * 2 + ["disc", "adv"] + ["self"] * 6
    assert [self_train_round(cfg, e) for e in range(3, 10)] == [
        None, (1, True), (1, False), (1, False), (2, True), (2, False), (2, False)]
    only = TrainConfig(source="s", target="t", mode="source-only", pretrain_epochs=2,
                       adv_epochs=0, self_train_rounds=1, self_train_epochs=1)
    assert epoch_phases(only) == ["seg", "seg", "self"] and only.selection == "last"


@pytest.mark.parametrize(("kw", "match"), [
    (dict(mode="sda"), "unlabelled targets"),
    (dict(mode="source-only", target=None), "needs a target"),
    (dict(self_train_epochs=0), "self_train_epochs"),
    (dict(self_train_rounds=-1), "self_train_rounds"),
    (dict(self_train_keep=0.0), "self_train_keep"),
    (dict(self_train_keep=1.5), "self_train_keep"),
    (dict(self_train_adapt="tent"), "self_train_adapt"),
    (dict(self_train_adapt="bn", norm="instance"), "--norm batch"),
])
def test_bad_self_training_settings_are_one_clear_error(kw, match):
    values = dict(source="s", target="t", mode="uda", discs=["shape"], self_train_rounds=1)
    values.update(kw)
    if values["mode"] == "source-only":
        values["discs"] = []
    with pytest.raises(InputError, match=match):
        TrainConfig(**values).validate()


def test_rounds_label_the_target_with_the_averaged_model(tmp_path, domains):
    """Round 1's labels are exactly the adapted model's predictions (p > threshold).

    Stopping at the boundary before round 1 and resuming also proves that the labels come
    from the state at that boundary, i.e. that a resumed run labels as a whole one does.
    """
    cfg = _cfg(tmp_path / "run", domains)
    before = len(cfg.phases()) - 4
    train(cfg, max_epochs=before)
    state = load_state(tmp_path / "run" / "state.pt")
    model = SegmentationNet(backbone="resnet18")
    model.load_state_dict(state["ema"])  # the average labels, not G's last weights
    model.eval()
    result = resume(tmp_path / "run")
    folder = tmp_path / "run" / "pseudo" / "round-1"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 4  # the target's training split only (5 images, 1 for validation)
    for name in names:
        image = read_image(domains[1] / "images" / name)
        want = (predict_probs(model, image, torch.device("cpu")) > 0.5).numpy()
        assert np.array_equal(read_mask(folder / name), want), name
    assert sorted(p.name for p in (tmp_path / "run" / "pseudo").iterdir()) == [
        "round-1", "round-2"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [r["phase"] for r in lines] == cfg.phases()
    firsts = [r["pseudo"]["round"] for r in lines if "pseudo" in r]
    assert firsts == [1, 2] and lines[before]["pseudo"]["images"] == 4
    assert result.records[-1]["selected"]  # default selection with rounds: last


def test_confident_labels_after_adabn_and_a_loss_that_skips_the_rest(tmp_path, domains):
    """``self_train_keep`` < 1 writes unsure pixels; ``self_train_adapt = "bn"`` labels
    with AdaBN statistics of the target split: the labels are exactly that model's."""
    from stainadapt.data.pseudo_labels import (
        UNSURE_PIXEL,
        class_balanced_cuts,
        encode_pseudo_label,
    )
    from stainadapt.inference import adapted_copy

    cfg = _cfg(tmp_path / "run", domains, self_train_rounds=1, self_train_epochs=1,
               self_train_keep=0.6, self_train_adapt="bn")
    before = len(cfg.phases()) - 1
    train(cfg, max_epochs=before)
    state = load_state(tmp_path / "run" / "state.pt")
    model = SegmentationNet(backbone="resnet18")
    model.load_state_dict(state["ema"])
    model.eval()
    resume(tmp_path / "run")
    folder = tmp_path / "run" / "pseudo" / "round-1"
    names = sorted(p.name for p in folder.iterdir())
    images = [read_image(domains[1] / "images" / n) for n in names]
    labeller = adapted_copy(model, images, torch.device("cpu"), "bn")
    probs = [predict_probs(labeller, im, torch.device("cpu")).numpy() for im in images]
    cuts = class_balanced_cuts(probs, 0.5, 0.6)
    unsure = 0.0
    for name, prob in zip(names, probs, strict=True):
        stored = read_image(folder / name)[:, :, 0]
        assert np.array_equal(stored, encode_pseudo_label(prob, 0.5, *cuts)), name
        unsure += (stored == UNSURE_PIXEL).mean()
    assert 0.3 < unsure / len(names) < 0.45  # 40 % of each class, plus ties
    record = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines()][-1]["pseudo"]
    assert record["keep"] == 0.6 and record["adapt"] == "bn"
    assert record["unsure"] == pytest.approx(unsure / len(names), abs=1e-3)


def test_round_start_restarts_g_from_the_average_with_a_fresh_adam(tmp_path, domains):
    cfg = _cfg(tmp_path / "run", domains, mode="source-only", discs=[], adv_epochs=0,
               self_train_rounds=1, self_train_epochs=1, ema=0.5)
    trainer = Trainer(cfg)
    trainer.fit(max_epochs=1)  # one seg epoch: G and its average now differ
    assert trainer.opt_g.state
    average = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    assert any(not torch.equal(v, average[k]) for k, v in trainer.model.state_dict().items()
               if v.is_floating_point())
    restart_generator(trainer)
    assert not trainer.opt_g.state
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, average[key]), key
    trainer.fit()
    assert trainer.pseudo and all("round-1" in str(s.mask) for s in trainer.pseudo)
    assert any(key[2] == 1 for key in trainer.batches._datasets)  # the round's labelled stream


def test_resume_inside_a_round_equals_uninterrupted(tmp_path, domains):
    whole = _cfg(tmp_path / "a", domains)
    train(whole)
    parts = _cfg(tmp_path / "b", domains)
    inside = len(parts.phases()) - 3  # after round 1's first epoch
    train(parts, max_epochs=inside)
    shutil.rmtree(tmp_path / "b" / "pseudo" / "round-1", ignore_errors=False)
    with pytest.raises(InputError, match="pseudo-label"):
        resume(tmp_path / "b")  # the folder lost its labels: one clear error
    train(_cfg(tmp_path / "c", domains), max_epochs=inside)
    resume(tmp_path / "c")
    a = load_state(tmp_path / "a" / "state.pt")
    c = load_state(tmp_path / "c" / "state.pt")
    assert a["epoch"] == c["epoch"] == len(whole.phases())
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, c[part][key]), (part, key)
    for key, value in a["opt_g"]["state"].items():
        assert torch.equal(value["exp_avg"], c["opt_g"]["state"][key]["exp_avg"])


def test_cli_flags_reach_the_engine_and_bad_use_is_exit_2(tmp_path, domains):
    from typer.testing import CliRunner

    from stainadapt.cli.app import app

    s, t = domains
    args = ["train", "--source", str(s), "--target", str(t), "--backbone", "resnet18",
            "--image-size", "64", "--batch-size", "2", "--steps-per-epoch", "1",
            "--pretrain-epochs", "1", "--adv-epochs", "0", "--samples", "0",
            "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--mode", "source-only", "--self-train-rounds", "1",
                                   "--self-train-epochs", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "pseudo/" in res.output and (tmp_path / "r" / "pseudo" / "round-1").is_dir()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == ["seg", "self"]
    bad = CliRunner().invoke(app, [*args, "--mode", "sda", "--self-train-rounds", "1",
                                   "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "unlabelled targets" in bad.output
    assert "Traceback" not in bad.output
