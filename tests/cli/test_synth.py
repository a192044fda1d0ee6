"""``stainadapt synth`` through the real root app."""

from __future__ import annotations

from typer.testing import CliRunner

from stainadapt.cli.app import app


def test_synth_cli(tmp_path):
    out = tmp_path / "data"
    res = CliRunner().invoke(
        app,
        [
            "synth",
            str(out),
            "--stain",
            "pasm",
            "--stain",
            "masson",
            "-n",
            "2",
            "--size",
            "64",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    for stain in ("pasm", "masson"):
        assert sorted(p.name for p in (out / stain / "images").iterdir()) == [
            f"{stain}_0000.png",
            f"{stain}_0001.png",
        ]
        assert len(list((out / stain / "masks").iterdir())) == 2
    assert "--seed 3" in (out / "README.txt").read_text()


def test_synth_cli_bad_stain(tmp_path):
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--stain", "giemsa"])
    assert res.exit_code == 2
    assert "unknown stain 'giemsa'" in res.output
    assert not (tmp_path / "x").exists()
