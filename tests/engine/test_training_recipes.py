"""The training recipes and the small-data levers they set (sampling, lr schedule, groups)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stainadapt.config import TrainConfig, resolve_config
from stainadapt.data.dataset import CropDataset
from stainadapt.data.folders import scan_domain
from stainadapt.engine import trainer as trainer_module
from stainadapt.engine.state import load_state
from stainadapt.engine.trainer import Trainer, resume, train
from stainadapt.errors import InputError
from stainadapt.recipes import TRAINING, training_config
from stainadapt.testing import make_domain

TINY = dict(backbone="resnet18", image_size=64, batch_size=2, steps_per_epoch=3,
            device="cpu", samples=0, mode="source-only", disc_epochs=0, adv_epochs=0)

#: TrainConfig's defaults before the small-data fields existed: ``--recipe paper`` must
#: give exactly these (every field that existed then).
PAPER_DEFAULTS = dict(
    target=None, out="runs/run", mode="uda", discs=[], backbone="resnet34", pretrained=None,
    init=None, pretrain_epochs=50, disc_epochs=10, adv_epochs=100, steps_per_epoch=0,
    batch_size=4, lr=1e-3, disc_lr=1e-3, beta1=0.9, beta2=0.999, dice_weight=0.0,
    adv_loss="flip", ema=0.0, domain_batchnorm=True, self_train_rounds=0,
    self_train_epochs=12, image_size=256, val_fraction=0.2, seed=0, device="auto",
    amp="auto", workers=0, sync_bn=False, select=None, augment=True, stain_jitter=0.0,
    acquisition_jitter=1.0, normalize=None, reference=None, threshold=0.5, samples=4,
    divergence_steps=3, rollback_lr_factor=0.5, max_rollbacks=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp("recipes") / "s", "source", n=4, size=96)


def test_paper_recipe_is_the_plain_configuration_field_by_field():
    cfg = training_config("paper", None, {"source": "s", "target": "t", "discs": ["shape"]})
    values = dataclasses.asdict(cfg)
    for key, expected in PAPER_DEFAULTS.items():
        if key not in ("discs", "target"):
            assert values[key] == expected, key
    # and the new levers are off
    assert (cfg.lr_schedule, cfg.warmup_steps, cfg.foreground_share, cfg.augment_profile,
            cfg.encoder_lr_mult, cfg.steps, cfg.select_smoothing) == \
        ("constant", 0, 0.0, "light", 1.0, 0, 0.0)
    assert cfg == TrainConfig(source="s", target="t", discs=["shape"])


def test_real_recipe_sets_its_fields_and_flags_win(tmp_path):
    cfg = training_config(None, None, {"source": "s", "mode": "source-only"})
    assert cfg.recipe == "real"
    for key, value in TRAINING["real"].items():
        assert getattr(cfg, key) == value, key
    cfg = training_config("real", None, {"source": "s", "mode": "source-only",
                                         "lr_schedule": "poly"})
    assert cfg.lr_schedule == "poly" and cfg.dice_weight == 1.0
    # a config file naming a recipe; a flag names another
    path = tmp_path / "c.toml"
    path.write_text('recipe = "paper"\nsource = "s"\nmode = "source-only"\n')
    assert training_config(None, path, {}).lr_schedule == "constant"
    assert training_config("real", path, {}).lr_schedule == "cosine"
    with pytest.raises(InputError, match="unknown recipe 'fast'; known: paper, real"):
        training_config("fast", None, {"source": "s"})


def test_steps_and_epoch_flags_agree():
    so = {"source": "s", "mode": "source-only", "steps_per_epoch": 10}
    by_steps = resolve_config(None, {**so, "steps": 600})
    by_epochs = resolve_config(None, {**so, "pretrain_epochs": 60, "adv_epochs": 0})
    assert by_steps.pretrain_epochs == 60
    assert by_steps.phases() == by_epochs.phases() == ["seg"] * 60  # the whole budget
    # adversarial epochs given with it are still trained (as segmentation epochs here) ...
    assert len(resolve_config(None, {**so, "steps": 600, "adv_epochs": 5}).phases()) == 65
    # ... and a run with discriminators keeps its schedule: steps is s0 there
    uda = resolve_config(None, {**so, "mode": "uda", "target": "t", "discs": ["mirrored"],
                                "steps": 600})
    assert uda.phases().count("seg") == 60 and uda.adv_epochs == 100
    # a run's own config.toml holds both, and they agree
    assert resolve_config(None, {**so, "steps": 600, "pretrain_epochs": 60}).pretrain_epochs == 60
    with pytest.raises(InputError, match="steps 600 and pretrain_epochs 50 disagree"):
        resolve_config(None, {**so, "steps": 600, "pretrain_epochs": 50})
    with pytest.raises(InputError, match="multiple of steps_per_epoch"):
        TrainConfig(source="s", mode="source-only", steps=605, steps_per_epoch=10).validate()
    with pytest.raises(InputError, match="steps needs steps_per_epoch"):
        TrainConfig(source="s", mode="source-only", steps=600).validate()
    # epochs given on the command line replace a recipe's steps
    cfg = resolve_config(None, {**so, "pretrain_epochs": 7}, defaults={"steps": 600})
    assert cfg.pretrain_epochs == 7 and cfg.steps == 0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr_schedule", "step", "lr_schedule 'step' is not one of constant, cosine, poly"),
    ("augment_profile", "wild", "augment_profile 'wild' is not one of light, strong"),
    ("foreground_share", 1.5, "foreground_share must be in"),
    ("encoder_lr_mult", 0.0, "encoder_lr_mult must be a positive number"),
    ("select_smoothing", 1.0, "select_smoothing must be in"),
    ("warmup_steps", -1, "warmup_steps must be >= 0"),
])
def test_bad_lever_values_are_one_line(field, value, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(source="s", mode="source-only", **{field: value}).validate()


def test_foreground_share_of_dataset_crops(tmp_path):
    """Counted over many crops: the share that holds glomerulus pixels at the centre."""
    from PIL import Image

    size, crop = 256, 64
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i, (cy, cx) in enumerate([(40, 200), (210, 50)]):
        Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(
            tmp_path / "images" / f"t{i}.png")
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2).astype(np.uint8) * 255
        Image.fromarray(disc).save(tmp_path / "masks" / f"t{i}.png")
    samples = scan_domain(tmp_path, require_masks=True)

    def share(fg: float) -> float:
        ds = CropDataset(samples, crop, length=2000, seed=1, foreground_share=fg)
        return float(np.mean([ds[i]["mask"].amax().item() > 0 for i in range(len(ds))]))

    uniform = share(0.0)
    assert uniform < 0.2
    for fg in (0.33, 0.5):
        assert share(fg) == pytest.approx(fg + (1 - fg) * uniform, abs=0.04)
    # share 0 gives the very crops of a dataset built without the option
    plain = CropDataset(samples, crop, length=8, seed=1)
    zero = CropDataset(samples, crop, length=8, seed=1, foreground_share=0.0)
    for i in range(8):
        assert torch.equal(plain[i]["image"], zero[i]["image"])


def _record_lrs(monkeypatch) -> list[tuple[int, int, float]]:
    seen: list[tuple[int, int, float]] = []
    original = trainer_module.GeneratorLR.__call__

    def probe(self, optimizer, epoch, step):
        original(self, optimizer, epoch, step)
        seen.append((epoch, step, optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(trainer_module.GeneratorLR, "__call__", probe)
    return seen


def test_lr_schedule_resumes_exactly(tmp_path, source, monkeypatch):
    """A killed and resumed run has the same lr at every step as an uninterrupted one."""
    seen = _record_lrs(monkeypatch)
    base = dict(TINY, source=str(source), pretrain_epochs=4, lr_schedule="cosine",
                warmup_steps=2, lr=1e-3)
    train(TrainConfig(**base, out=str(tmp_path / "a")))
    whole = list(seen)
    seen.clear()
    train(TrainConfig(**base, out=str(tmp_path / "b")), max_epochs=2)
    resume(tmp_path / "b")
    assert seen == whole
    lrs = [lr for _, _, lr in whole]
    assert len(lrs) == 12 and lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False)) and lrs[-1] < 1e-4
    a, b = (load_state(tmp_path / r / "state.pt") for r in ("a", "b"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_encoder_group_and_schedule_keep_their_ratio(source, tmp_path):
    cfg = TrainConfig(**TINY, source=str(source), out=str(tmp_path / "r"), pretrain_epochs=2,
                      encoder_lr_mult=0.1, lr_schedule="poly").validate()
    t = Trainer(cfg)
    groups = t.opt_g.param_groups
    assert len(groups) == 2
    n_enc = sum(p.numel() for p in t.model.encoder.parameters())
    assert sum(p.numel() for p in groups[0]["params"]) == n_enc
    t.g_lr(t.opt_g, 1, 1)
    f = t.g_lr.factor(1, 1)
    assert 0 < f < 1
    assert groups[0]["lr"] == pytest.approx(1e-4 * f) and groups[1]["lr"] == pytest.approx(1e-3 * f)


def test_plain_config_keeps_one_group_and_a_constant_lr(source, tmp_path):
    cfg = TrainConfig(**TINY, source=str(source), out=str(tmp_path / "r")).validate()
    t = Trainer(cfg)
    assert len(t.opt_g.param_groups) == 1 and "base_lr" not in t.opt_g.param_groups[0]
    t.g_lr(t.opt_g, 0, 0)
    assert t.opt_g.param_groups[0]["lr"] == cfg.lr


def test_selection_on_smoothed_validation_dice(source, tmp_path):
    cfg = TrainConfig(**TINY, source=str(source), out=str(tmp_path / "r"), pretrain_epochs=3,
                      select="source", select_smoothing=0.5).validate()
    t = Trainer(cfg)
    dices = [0.2, 0.9, 0.5]  # smoothed: 0.2, 0.55, 0.525 -> epoch 1 then stays
    for epoch, d in enumerate(dices):
        record = {"phase": "seg", "val": {"source": {"dice": d}}}
        t._select(epoch, "seg", record)
        t.records.append(record)
    assert t.best_epoch == 1 and t.best_score == pytest.approx(0.55)
    t2 = Trainer(dataclasses.replace(cfg, select_smoothing=0.9))
    for epoch, d in enumerate([0.2, 0.9, 0.95]):
        record = {"phase": "seg", "val": {"source": {"dice": d}}}
        t2._select(epoch, "seg", record)
        t2.records.append(record)
    assert t2.best_epoch == 2  # a steady rise wins


def test_bn_recalibration_sets_plain_crop_statistics(source, tmp_path):
    """Validation sees statistics of plain source crops, not of augmented batches."""
    from stainadapt.models.batchnorm import batchnorm_layers

    base = dict(TINY, source=str(source), pretrain_epochs=1, val_fraction=0.25,
                acquisition_jitter=3.0)
    plain = Trainer(TrainConfig(**base, out=str(tmp_path / "a")).validate())
    recal = Trainer(TrainConfig(**base, out=str(tmp_path / "b"), bn_recalibration=2).validate())
    plain.run_epoch(0, "seg")
    recal.run_epoch(0, "seg")
    first = lambda t: batchnorm_layers(t.eval_model)[0]  # noqa: E731
    assert int(first(recal).num_batches_tracked) == 2  # the plain average of 2 batches
    assert int(first(plain).num_batches_tracked) == 3  # one update per training step
    assert not torch.allclose(first(plain).running_var, first(recal).running_var)
    for (k, a), b in zip(plain.model.state_dict().items(),
                         recal.model.state_dict().values(), strict=True):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(a, b), k  # the same training: only statistics differ


def test_statistics_are_re_estimated_where_the_model_is_read(source, tmp_path):
    from stainadapt.engine.statistics import needs_statistics

    cfg = TrainConfig(**{**TINY, "mode": "uda", "adv_epochs": 2, "disc_epochs": 1},
                      source=str(source),
                      target=str(source), discs=["shape"], out=str(tmp_path / "r"),
                      pretrain_epochs=2, val_fraction=0.0,
                      self_train_rounds=2, self_train_epochs=2, bn_recalibration=1)
    t = Trainer(cfg.validate())
    # seg seg | disc | adv adv | self self | self self
    assert [needs_statistics(t, e) for e in range(len(t.phases))] == \
        [False, True, True, False, True, False, True, False, True]
    t2 = Trainer(dataclasses.replace(cfg, val_fraction=0.25, out=str(tmp_path / "v")))
    assert all(needs_statistics(t2, e) for e in range(len(t2.phases)))
