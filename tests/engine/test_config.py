"""TrainConfig: TOML in and out, unknown keys, flags over file values."""

from __future__ import annotations

import pytest

from stainadapt.config import TrainConfig, dumps_toml, load_toml, resolve_config
from stainadapt.errors import InputError


def test_round_trip(tmp_path):
    cfg = TrainConfig(source="a", target='b "q"', discs=["mirrored", "single:layer=f9"],
                      lr=2e-4, augment=False, select="target")
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg))
    back = TrainConfig(**load_toml(path))
    assert back == cfg


def test_none_fields_are_left_out(tmp_path):
    keys = [ln.split("=")[0].strip() for ln in dumps_toml(TrainConfig(source="a")).splitlines()]
    assert "source" in keys and "target" not in keys and "normalize" not in keys


def test_unknown_key_names_it_and_lists_valid(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('source = "a"\nlearning_rate = 0.1\n')
    with pytest.raises(InputError) as exc:
        load_toml(path)
    msg = str(exc.value)
    assert "learning_rate" in msg and "valid keys" in msg and "disc_lr" in msg
    assert str(path) in msg


def test_wrong_type_and_bad_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('batch_size = "four"\n')
    with pytest.raises(InputError, match="batch_size must be an integer"):
        load_toml(path)
    path.write_text("batch_size = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_toml(path)


def test_flags_override_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nsource = "s"\ntarget = "t"\ndiscs = ["mirrored"]\nlr = 0.5\n'
                    "batch_size = 8\n")
    cfg = resolve_config(path, {"lr": 0.01, "batch_size": None, "discs": ["shape"]})
    assert cfg.lr == 0.01 and cfg.batch_size == 8 and cfg.discs == ["shape"]
    assert cfg.mode == "uda" and cfg.selection == "last"


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"source": "s", "mode": "magic"}, "mode 'magic'"),
        ({"source": "s", "mode": "uda", "discs": ["shape"]}, "needs a target"),
        ({"source": "s", "target": "t", "mode": "uda"}, "at least one --disc"),
        ({"source": "s", "mode": "source-only", "image_size": 100}, "multiple of 32"),
        ({"source": "s", "mode": "source-only", "select": "best"}, "select 'best'"),
        ({"source": "s", "mode": "source-only", "normalize": "macenko"}, "go together"),
        ({"source": "s", "mode": "source-only", "acquisition_jitter": -1.0},
         "acquisition_jitter must be >= 0"),
        ({"source": "s", "mode": "source-only", "mpp": 0.0}, "mpp must be a positive"),
    ],
)
def test_validation_errors(values, match):
    with pytest.raises(InputError, match=match):
        resolve_config(None, values)


def test_mpp_is_a_number_or_unset(tmp_path):
    cfg = resolve_config(None, {"source": "s", "mode": "source-only", "mpp": 0.5})
    assert cfg.mpp == 0.5
    assert resolve_config(None, {"source": "s", "mode": "source-only"}).mpp is None
    path = tmp_path / "c.toml"
    path.write_text('mpp = "fine"\n')
    with pytest.raises(InputError, match="mpp must be a number"):
        load_toml(path)
