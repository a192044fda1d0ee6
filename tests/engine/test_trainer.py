"""The training engine end to end on tiny synthetic domains (resnet18, 64 px, few steps)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from stainadapt.config import TrainConfig
from stainadapt.engine.state import load_state
from stainadapt.engine.steps import opt_step
from stainadapt.engine.trainer import Trainer, resume, train
from stainadapt.errors import InputError, PluginError
from stainadapt.runs import load_model

TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=1,
            pretrain_epochs=1, disc_epochs=1, adv_epochs=1, device="cpu", samples=1)


def _cfg(tmp_path, domains, **kw):
    s, t = domains
    values = dict(TINY, source=str(s), target=str(t), out=str(tmp_path / "run"))
    values.update(kw)
    return TrainConfig(**values)


@pytest.mark.parametrize(
    ("mode", "discs"),
    [
        ("source-only", []),
        ("sda", ["mirrored", "shape"]),
        ("sda", []),  # the paper's "S + T": joint training on both domains' labels
        ("uda", ["single:layer=f9,weight=0.05"]),
        ("uda", ["concat"]),
    ],
)
def test_each_mode_and_disc_writes_a_loadable_run(tmp_path, domains, mode, discs):
    cfg = _cfg(tmp_path, domains, mode=mode, discs=discs)
    result = train(cfg)
    run = tmp_path / "run"
    for name in ("config.toml", "metrics.jsonl", "model.safetensors", "model.json",
                 "state.pt", "curves.png"):
        assert (run / name).is_file(), name
    assert list((run / "samples").glob("*.png"))
    model, meta = load_model(run)
    assert meta["backbone"] == "resnet18" and meta["mode"] == mode and meta["discs"] == discs
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in lines] == cfg.phases() == [r["phase"] for r in result.records]
    assert all("source" in r["val"] and "seconds" in r for r in lines)
    state = load_state(run / "state.pt")  # weights_only=True
    assert state["epoch"] == len(lines) and len(state["opt_d"]) == len(discs)
    if discs:
        adv = lines[-1]
        assert adv["disc_acc"] and any(k.startswith("adv_") for k in adv["losses"])
        assert any(k.startswith("d_") for k in lines[1]["losses"])  # disc phase trains D


def test_uda_runs_without_target_masks(tmp_path, domains):
    s, t = domains
    t2 = tmp_path / "t_nomasks"
    shutil.copytree(t, t2)
    shutil.rmtree(t2 / "masks")
    cfg = _cfg(tmp_path, (s, t2), mode="uda", discs=["shape"])
    result = train(cfg)
    assert "target" not in result.records[-1]["val"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_uda_target_selection_is_labelled_oracle(tmp_path, domains):
    cfg = _cfg(tmp_path, domains, mode="uda", discs=["single:layer=f4"], select="target")
    result = train(cfg)
    assert "target_oracle" in result.records[-1]["val"]
    assert "target" not in result.records[-1]["val"]


def test_resume_equals_uninterrupted(tmp_path, domains):
    base = dict(mode="uda", discs=["single:layer=f4", "shape"], adv_epochs=2,
                steps_per_epoch=2, samples=0, ema=0.9)
    train(_cfg(tmp_path / "a", domains, **base))
    train(_cfg(tmp_path / "b", domains, **base), max_epochs=2)
    assert load_state(tmp_path / "b" / "run" / "state.pt")["epoch"] == 2
    resume(tmp_path / "b" / "run")
    a = load_state(tmp_path / "a" / "run" / "state.pt")
    b = load_state(tmp_path / "b" / "run" / "state.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for da, db in zip(a["discs"], b["discs"], strict=True):
        for key, value in da.items():
            assert torch.equal(value, db[key]), key
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for key, value in a["ema"].items():  # the moving average resumes exactly too
        assert torch.equal(value, b["ema"][key]), key


def test_resume_of_a_run_older_than_acquisition_jitter_keeps_it_off(tmp_path, domains):
    """config.toml without the field (written before it existed) resumes with 0, not 1."""
    from stainadapt.config import load_toml

    cfg = _cfg(tmp_path, domains, mode="source-only", steps_per_epoch=1, samples=0)
    train(cfg, max_epochs=1)
    path = tmp_path / "run" / "config.toml"
    text = path.read_text()
    assert "acquisition_jitter = 1.0" in text
    path.write_text("\n".join(x for x in text.splitlines()
                              if not x.startswith("acquisition_jitter")) + "\n")
    resume(tmp_path / "run")
    assert load_toml(path)["acquisition_jitter"] == 0.0


def test_ema_model_is_validated_and_saved(tmp_path, domains):
    """With ``ema`` the saved model is G's moving average, not G's last weights."""
    from safetensors.torch import load_file

    cfg = _cfg(tmp_path, domains, mode="source-only", steps_per_epoch=3, samples=0,
               ema=0.5, select="last")
    train(cfg)
    state = load_state(tmp_path / "run" / "state.pt")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    weights = [k for k in state["model"] if k.endswith("weight") and "bn" not in k]
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in weights)
    assert set(saved) == set(state["ema"])
    for key, value in state["ema"].items():
        assert torch.equal(saved[key], value), key
    with pytest.raises(InputError, match="ema"):
        TrainConfig(source="s", mode="source-only", ema=1.0).validate()


def test_interrupt_keeps_last_epoch_boundary(tmp_path, domains, monkeypatch):
    cfg = _cfg(tmp_path, domains, mode="uda", discs=["single:layer=f4"], samples=0)
    trainer = Trainer(cfg)
    real_epoch = trainer.run_epoch
    calls = []

    def flaky(epoch, phase):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(epoch, phase)

    monkeypatch.setattr(trainer, "run_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_state(tmp_path / "run" / "state.pt")["epoch"] == 1
    result = resume(tmp_path / "run")
    assert result.epochs == 3


def test_existing_run_is_refused(tmp_path, domains):
    cfg = _cfg(tmp_path, domains, mode="source-only", pretrain_epochs=1, adv_epochs=0,
               samples=0)
    train(cfg)
    with pytest.raises(InputError, match="already holds a run"):
        train(cfg)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("nosuch", "unknown discriminators plugin 'nosuch'"),
     ("single:layer=f99", "unknown layer 'f99'"),
     ("single:depth=3", "has no option 'depth'")],
)
def test_bad_disc_spec_is_one_clear_error(tmp_path, domains, spec, match):
    with pytest.raises(PluginError, match=match):
        train(_cfg(tmp_path, domains, mode="uda", discs=[spec]))


def test_non_finite_loss_skips_the_step(tmp_path, domains):
    trainer = Trainer(_cfg(tmp_path, domains, mode="source-only", samples=0))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    params = [p for p in trainer.model.parameters()]
    loss = sum(p.sum() for p in params) * float("nan")
    acc = {"skipped": torch.zeros(())}
    trainer.opt_g.zero_grad()
    loss.backward()
    opt_step(trainer, trainer.opt_g, loss, acc)
    assert acc["skipped"].item() == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_normalizer_state_goes_into_model_json(tmp_path, domains):
    from stainadapt.data.io import read_image
    from stainadapt.runs import normalizer_from_meta, read_meta

    s, _ = domains
    cfg = _cfg(tmp_path, domains, mode="uda", discs=["single:layer=f4"], samples=0,
               normalize="macenko", reference=str(next((s / "images").iterdir())))
    train(cfg)
    meta = read_meta(tmp_path / "run")
    assert meta["normalizer"]["spec"] == "macenko" and meta["normalizer"]["state"]
    norm = normalizer_from_meta(meta["normalizer"])
    image = torch.tensor(read_image(next((s / "images").iterdir()))).permute(2, 0, 1)
    out = norm(image[None].contiguous())
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 96, 96)


def test_init_starts_g_from_another_run(tmp_path, domains):
    """--init loads G's weights from a run; a backbone mismatch is one clear error."""
    base = _cfg(tmp_path, domains, mode="source-only", out=str(tmp_path / "base"))
    train(base)
    source_model, _ = load_model(tmp_path / "base")
    trainer = Trainer(_cfg(tmp_path, domains, mode="uda", discs=["shape"],
                           init=str(tmp_path / "base"), pretrain_epochs=0))
    for name, value in source_model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name].cpu(), value), name
    fresh = Trainer(_cfg(tmp_path, domains, mode="uda", discs=["shape"], seed=3))
    assert not all(torch.equal(fresh.model.state_dict()[k].cpu(), v)
                   for k, v in source_model.state_dict().items())
    with pytest.raises(InputError, match="backbone"):
        Trainer(_cfg(tmp_path, domains, mode="uda", discs=["shape"], backbone="resnet34",
                     init=str(tmp_path / "base")))
    with pytest.raises(InputError, match="model.safetensors"):
        Trainer(_cfg(tmp_path, domains, mode="uda", discs=["shape"], init=str(tmp_path)))


def test_tile_mpp_goes_into_model_json(tmp_path, domains):
    """train --mpp: model.json records the tiles' resolution (null when not given)."""
    from stainadapt.runs import read_meta

    train(_cfg(tmp_path, domains, mode="source-only", mpp=0.5))
    assert read_meta(tmp_path / "run")["mpp"] == 0.5
    train(_cfg(tmp_path, domains, mode="source-only", out=str(tmp_path / "plain")))
    assert read_meta(tmp_path / "plain")["mpp"] is None
