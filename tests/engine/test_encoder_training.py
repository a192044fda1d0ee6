"""Fine-tuning an encoder: its lr multiplier through self-training, rollback and resume;
the encoder frozen for the first epochs; a timm model by name through the CLI."""

from __future__ import annotations

import socket
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.config import TrainConfig, load_toml
from stainadapt.engine.callbacks.guard import DivergenceGuard
from stainadapt.engine.state import load_state
from stainadapt.engine.trainer import Trainer, resume, train
from stainadapt.errors import InputError
from stainadapt.testing import make_domain

TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=2,
            device="cpu", samples=0, mode="source-only", adv_epochs=0, lr=1e-3)
runner = CliRunner()


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return make_domain(root / "s", "source", n=4), make_domain(root / "t", "target", n=4,
                                                               masks=False)


def _cfg(out, domains, **kw) -> TrainConfig:
    s, t = domains
    return TrainConfig(**{**TINY, "source": str(s), "target": str(t), "out": str(out), **kw})


def _lrs(param_groups) -> list[float]:
    return [round(float(g["lr"]), 12) for g in param_groups]


def test_encoder_lr_mult_survives_self_training_rollback_and_resume(tmp_path, domains):
    kw = dict(pretrain_epochs=1, self_train_rounds=1, self_train_epochs=2, encoder_lr_mult=0.1)
    trainer = Trainer(_cfg(tmp_path / "a", domains, **kw))
    encoder = {id(p) for p in trainer.model.encoder.parameters()}
    trainer.fit(max_epochs=2)  # the seg epoch, then round 1 (a fresh Adam)
    groups = trainer.opt_g.param_groups
    assert _lrs(groups) == [1e-4, 1e-3]
    assert {id(p) for p in groups[0]["params"]} == encoder
    DivergenceGuard()._rollback(trainer, 2, "a test")  # every group x rollback_lr_factor
    assert _lrs(trainer.opt_g.param_groups) == [5e-5, 5e-4]

    train(_cfg(tmp_path / "b", domains, **kw), max_epochs=2)
    # a config.toml written before the rename still resumes, with the same groups
    config = tmp_path / "b" / "config.toml"
    config.write_text(config.read_text().replace("encoder_lr_mult", "encoder_lr_scale"))
    assert load_toml(config)["encoder_lr_mult"] == 0.1
    resume(tmp_path / "b")
    state = load_state(tmp_path / "b" / "state.pt")
    assert state["epoch"] == 3 and _lrs(state["opt_g"]["param_groups"]) == [1e-4, 1e-3]


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def test_freeze_encoder_epochs_hold_weights_and_statistics_then_train(tmp_path, domains):
    cfg = _cfg(tmp_path / "run", domains, pretrain_epochs=3, freeze_encoder_epochs=2,
               ema=0.5, bn_recalibration=1)
    trainer = Trainer(cfg)
    encoder, decoder = _clone(trainer.model.encoder), _clone(trainer.model.decoder)
    trainer.fit(max_epochs=1)
    assert _same(_clone(trainer.model.encoder), encoder)  # weights and BN running stats
    # the average, recalibrated before validation, keeps the frozen statistics too
    assert _same(_clone(trainer.ema.module.encoder), encoder)
    assert not _same(_clone(trainer.model.decoder), decoder)
    trainer.model.train()
    assert not trainer.model.encoder.training and trainer.model.decoder.training

    resume(tmp_path / "run", max_epochs=1)  # epoch 2: still frozen after a resume
    state = load_state(tmp_path / "run" / "state.pt")
    frozen = {k[len("encoder."):]: v for k, v in state["model"].items()
              if k.startswith("encoder.")}
    assert state["epoch"] == 2 and _same(frozen, encoder)
    resume(tmp_path / "run")  # epoch 3: the encoder trains, its statistics move
    state = load_state(tmp_path / "run" / "state.pt")
    after = {k[len("encoder."):]: v for k, v in state["model"].items()
             if k.startswith("encoder.")}
    moved = [k for k, v in after.items() if not torch.equal(v, encoder[k])]
    assert any(k.endswith("running_mean") for k in moved)
    assert any(k.endswith("weight") and "bn" not in k for k in moved)


def test_freeze_longer_than_pretraining_is_refused(domains, tmp_path):
    with pytest.raises(InputError, match="freeze_encoder_epochs"):
        _cfg(tmp_path, domains, pretrain_epochs=1, freeze_encoder_epochs=2).validate()


def test_timm_model_by_name_trains_and_predicts_through_the_cli(tmp_path, domains):
    s, _ = domains
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "train", "--source", str(s), "--mode", "source-only", "--backbone", "regnetx_002",
        "--image-size", "64", "--batch-size", "2", "--steps-per-epoch", "2",
        "--pretrain-epochs", "1", "--adv-epochs", "0", "--samples", "0", "--device", "cpu",
        "--encoder-lr-mult", "0.5", "--freeze-encoder-epochs", "1", "--out", str(run)])
    assert res.exit_code == 0, res.output
    written = tomllib.loads((run / "config.toml").read_text())
    assert written["encoder_lr_mult"] == 0.5 and written["freeze_encoder_epochs"] == 1
    res = runner.invoke(app, ["predict", str(s / "images"), "--model", str(run),
                              "--out", str(tmp_path / "masks"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    mask = np.asarray(Image.open(tmp_path / "masks" / "im0.png"))
    assert mask.shape == (96, 96)


def test_uncached_published_weights_offline_are_exit_2(tmp_path, domains, monkeypatch):
    import huggingface_hub.constants as hub

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    s, _ = domains
    res = runner.invoke(app, [
        "train", "--source", str(s), "--mode", "source-only", "--backbone", "resnet10t",
        "--pretrained", "imagenet", "--image-size", "64", "--pretrain-epochs", "1",
        "--adv-epochs", "0", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert lines[0].startswith("error: resnet10t"), res.output
    assert "timm/resnet10t.c3_in1k" in text and "HF_HUB_OFFLINE=1" in text
    assert "Traceback" not in res.output
