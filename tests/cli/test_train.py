"""``stainadapt train`` through the CLI: config file + flags, one-line errors (exit 2)."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.testing import make_domain

runner = CliRunner()


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-domains")
    return make_domain(root / "s", "source", n=4), make_domain(root / "t", "target", n=4)


def test_config_file_and_flags(tmp_path, domains):
    s, t = domains
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'source = "{s.as_posix()}"\ntarget = "{t.as_posix()}"\nmode = "uda"\n'
        'discs = ["single:layer=f4"]\nbackbone = "resnet18"\nimage_size = 64\n'
        "batch_size = 2\nsteps_per_epoch = 1\npretrain_epochs = 1\ndisc_epochs = 1\n"
        "adv_epochs = 3\nsamples = 0\ndevice = \"cpu\"\n"
    )
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--adv-epochs", "1",
                              "--disc", "shape", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = tomllib.loads((out / "config.toml").read_text())
    assert written["adv_epochs"] == 1 and written["discs"] == ["shape"]
    assert written["image_size"] == 64
    assert (out / "model.safetensors").is_file()
    # resuming a finished run is a no-op that still succeeds
    res = runner.invoke(app, ["train", "--resume", str(out)])
    assert res.exit_code == 0, res.output


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), res.output
    text = " ".join(lines)
    for needle in needles:
        assert needle in text, res.output
    return text


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('source = "x"\nlearnig_rate = 0.1\n')
    res = runner.invoke(app, ["train", "--config", str(cfg)])
    _one_line_error(res, "learnig_rate", "valid keys")


def test_bad_disc_spec(tmp_path, domains):
    s, t = domains
    res = runner.invoke(app, ["train", "--source", str(s), "--target", str(t),
                              "--disc", "nosuch", "--backbone", "resnet18",
                              "--out", str(tmp_path / "r"), "--device", "cpu"])
    _one_line_error(res, "nosuch", "known:")


def test_bad_mode_and_missing_target(tmp_path, domains):
    s, _ = domains
    res = runner.invoke(app, ["train", "--source", str(s), "--mode", "magic"])
    _one_line_error(res, "magic")
    res = runner.invoke(app, ["train", "--source", str(s), "--disc", "shape"])
    _one_line_error(res, "needs a target")


def test_resume_of_a_folder_without_run(tmp_path):
    res = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    _one_line_error(res, "config.toml")
