"""Discriminator updates per G update (``disc_steps``) and label smoothing
(``disc_label_smoothing``): tiny deterministic runs on the shared pair of tiny domains."""

from __future__ import annotations

import math

import pytest

from stainadapt.config import TrainConfig
from stainadapt.engine.trainer import Trainer
from stainadapt.errors import InputError


def _cfg(out, domains, **kw) -> TrainConfig:
    s, t = domains
    values = dict(source=str(s), target=str(t), out=str(out), mode="uda",
                  discs=["single:layer=f4,weight=0.0"], backbone="resnet18", image_size=64,
                  batch_size=2, pretrain_epochs=0, disc_epochs=0, adv_epochs=1,
                  steps_per_epoch=3, val_fraction=0.0, augment=False, samples=0,
                  device="cpu", seed=0)
    values.update(kw)
    return TrainConfig(**values)


def _adam_steps(opt) -> int:
    return int(next(iter(opt.state.values()))["step"])


def test_each_g_step_takes_disc_steps_discriminator_updates(tmp_path, domains):
    for k in (1, 3):
        trainer = Trainer(_cfg(tmp_path / f"k{k}", domains, disc_steps=k))
        result = trainer.fit()
        assert _adam_steps(trainer.opt_g) == 3
        assert _adam_steps(trainer.opt_d[0]) == 3 * k
        acc = result.records[-1]["disc_acc"]["single.single"]
        assert 0.0 <= acc <= 1.0  # recorded once per G step, not k times


def test_smoothed_labels_keep_the_discriminator_from_certainty(tmp_path, domains):
    """Hard labels let D separate the shifted colours (its BCE falls well below that of
    the smoothed goal); smoothed ones cannot push its BCE under the goal's entropy."""
    losses = {}
    for s in (0.0, 0.6):
        cfg = _cfg(tmp_path / f"s{s}", domains, disc_epochs=6, adv_epochs=0, steps_per_epoch=6,
                   disc_label_smoothing=s)
        records = Trainer(cfg).fit().records
        losses[s] = records[-1]["losses"]["d_single.single"]
    goal = 0.2  # labels 0/1 train towards 0.2/0.8
    entropy = -(goal * math.log(goal) + (1 - goal) * math.log(1 - goal))
    assert losses[0.6] >= entropy - 1e-4, losses
    assert losses[0.0] < entropy - 0.1, losses


@pytest.mark.parametrize(("kw", "match"), [
    (dict(disc_steps=0), "disc_steps"),
    (dict(disc_label_smoothing=1.0), "disc_label_smoothing"),
    (dict(disc_label_smoothing=-0.1), "disc_label_smoothing"),
])
def test_bad_discriminator_settings_are_one_clear_error(kw, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(source="s", target="t", mode="uda", discs=["shape"], **kw).validate()
