"""Every example in examples/ runs, on tiny settings (STAINADAPT_EXAMPLE_TINY=1), so none rots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ, STAINADAPT_EXAMPLE_TINY="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("stainadapt") is None,
                    reason="needs bash and the stainadapt command on PATH")
def test_own_data(tmp_path):
    work = tmp_path / "work"
    out = _run(["bash", str(EXAMPLES / "own_data" / "run.sh"), "--work", str(work)],
               tmp_path).stdout
    assert "mean ± std" in out and "pooled" in out, out  # the Dice table
    assert len(list((work / "pred").glob("*.png"))) == 3
    assert (work / "run" / "model.safetensors").is_file()
    # the layout the README shows is what the example used
    assert sorted(p.name for p in (work / "data" / "pasm").iterdir()) == ["images", "masks"]


def test_python_api(tmp_path):
    script = EXAMPLES / "python_api.py"
    code_lines = script.read_text().splitlines()
    assert len(code_lines) < 40, "python_api.py is promised to stay under 40 lines"
    out = _run([sys.executable, str(script), str(tmp_path / "work")], tmp_path).stdout
    assert re.search(r"mean Dice \d\.\d{3} ± \d\.\d{3} over 3 images", out), out
    assert (tmp_path / "work" / "run" / "model.json").is_file()


def test_gradient_reversal_step(tmp_path):
    script = EXAMPLES / "gradient_reversal.py"
    out = _run([sys.executable, str(script), str(tmp_path / "work")], tmp_path).stdout
    assert "with gradient reversal" in out, out
    rows = (tmp_path / "work" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and '"adv_' not in rows[-1]  # the adv epochs ran the GRL step


def test_custom_discriminator_unpackaged(tmp_path):
    script = EXAMPLES / "custom_discriminator" / "train_with_it.py"
    out = _run([sys.executable, str(script), str(tmp_path / "work")], tmp_path).stdout
    assert "patch.patch" in out, out
    config = (tmp_path / "work" / "run" / "config.toml").read_text()
    assert "patch:layer=f4" in config


def test_custom_discriminator_package_metadata():
    folder = EXAMPLES / "custom_discriminator"
    meta = tomllib.loads((folder / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["stainadapt.discriminators"]
    module, _, attr = eps["patch"].partition(":")
    assert meta["tool"]["setuptools"]["py-modules"] == [module]
    sys.path.insert(0, str(folder))
    try:
        factory = getattr(__import__(module), attr)
    finally:
        sys.path.remove(str(folder))
    import torch

    disc = factory({"f4": (32, 32)}, width=8)  # what `pip install` would register
    logits = disc({"f4": torch.randn(2, 32, 4, 4)})
    assert logits["patch"].shape == (2,) and disc.weights == {"patch": 0.01}


def _documented_keys(text: str) -> set[str]:
    """Keys set (``key = ...``) or shown unset (``# key = ...``) in a config file."""
    return set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", text, flags=re.MULTILINE))


def test_config_toml_documents_every_field_and_trains(tmp_path):
    from typer.testing import CliRunner

    from stainadapt.cli.app import app
    from stainadapt.config import TrainConfig, load_toml
    from stainadapt.data.synth import generate

    path = EXAMPLES / "config.toml"
    names = {f.name for f in fields(TrainConfig)}
    documented = _documented_keys(path.read_text())
    assert not names - documented, (
        f"examples/config.toml lacks {sorted(names - documented)}: add each with a comment")
    assert not documented - names, f"examples/config.toml has stale keys {documented - names}"
    TrainConfig(**load_toml(path)).validate()

    generate(tmp_path / "data", n=6, size=96)
    tiny = ["--source", str(tmp_path / "data/pasm"), "--target", str(tmp_path / "data/masson"),
            "--out", str(tmp_path / "run"), "--backbone", "resnet18", "--image-size", "64",
            "--batch-size", "2", "--pretrain-epochs", "1", "--disc-epochs", "1",
            "--adv-epochs", "1", "--steps-per-epoch", "1", "--samples", "0", "--device", "cpu"]
    result = CliRunner().invoke(app, ["train", "--config", str(path), *tiny])
    assert result.exit_code == 0, result.output
    written = load_toml(tmp_path / "run" / "config.toml")
    assert written["discs"] == ["mirrored", "shape"] and written["mode"] == "uda"
