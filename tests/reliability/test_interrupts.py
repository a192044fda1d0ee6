"""Interrupted runs on a real ``python -m stainadapt train`` subprocess (tiny model).

* kill -9 at an arbitrary moment leaves only complete files (atomic writes), and
  ``--resume`` finishes the run;
* SIGINT and SIGTERM stop at once with exit code 130 and leave a resumable state;
* an interrupted ``predict`` rerun writes only the images not yet written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.engine.state import load_state
from stainadapt.runs import load_model

EPOCHS = dict(pretrain_epochs=1, disc_epochs=1, adv_epochs=4)  # 6 epochs of 2 steps
TOTAL = sum(EPOCHS.values())


def _args(domains, out: Path) -> list[str]:
    s, t = domains
    args = ["train", "--source", str(s), "--target", str(t), "--mode", "uda",
            "--disc", "single:layer=f4", "--out", str(out)]
    for key, value in {**TINY, **EPOCHS}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "stainadapt", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs_done(run: Path) -> int:
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return sum(1 for ln in text.splitlines() if ln.strip() and "event" not in ln)


def _wait_for(proc: subprocess.Popen, run: Path, epochs: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while _epochs_done(run) < epochs:
        if proc.poll() is not None:
            pytest.fail(f"training ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training made no progress")
        time.sleep(0.02)


def _check_complete(run: Path) -> int:
    """Every real (non-hidden) file is whole; returns the epoch of state.pt."""
    state = load_state(run / "state.pt")  # weights_only=True; raises on a half file
    assert set(state) >= {"model", "discs", "opt_g", "opt_d", "epoch", "rng"}
    tomllib.loads((run / "config.toml").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= state["epoch"]
    if (run / "model.safetensors").exists():
        load_model(run)  # safetensors + model.json, both complete
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name for name in leftovers), leftovers  # only temp files hide
    return int(state["epoch"])


def test_kill_9_keeps_complete_files_and_resume_finishes(tmp_path, tiny_domains):
    run = tmp_path / "run"
    proc = _start(_args(tiny_domains, run))
    _wait_for(proc, run, 3)  # an adversarial epoch has written model.safetensors
    time.sleep(0.15)  # somewhere inside the next epoch or its checkpoint writes
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    epoch = _check_complete(run)
    # metrics.jsonl goes before state.pt: a kill between them leaves the previous state
    assert 2 <= epoch < TOTAL
    assert (run / "model.safetensors").exists()

    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert _check_complete(run) == TOTAL
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(TOTAL))  # the killed epoch once


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_with_a_resumable_state(tmp_path, tiny_domains, sig):
    run = tmp_path / "run"
    proc = _start(_args(tiny_domains, run))
    _wait_for(proc, run, 2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    flat = "".join(output.split())  # rich wraps long lines at 80 columns without a tty
    assert "interrupted" in output and f"--resume{run}" in flat
    assert output.count("interrupted") == 1, output  # the trainer's line, not a second one
    assert "Traceback" not in output
    epoch = _check_complete(run)
    assert 2 <= epoch < TOTAL
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert _check_complete(run) == TOTAL


def test_interrupted_predict_resumes_from_unwritten_images(tmp_path, monkeypatch):
    import torch

    import stainadapt.inference as inference
    from stainadapt.models.unet import SegmentationNet
    from stainadapt.runs import save_model

    torch.manual_seed(0)
    save_model(tmp_path / "run", SegmentationNet("resnet18", decoder_channels=(16, 16, 8, 8, 8)),
               {"image_size": 64})
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    real = inference.SlidingWindowPredictor.predict
    seen: list[int] = []

    def interrupted(self, image, *args, **kwargs):
        seen.append(1)
        if len(seen) == 3:  # Ctrl-C while the third image is predicted
            raise KeyboardInterrupt
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(inference.SlidingWindowPredictor, "predict", interrupted)
    cmd = ["predict", str(src), "--model", str(tmp_path / "run"), "--out", str(out),
           "--device", "cpu", "--probabilities"]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 130 and "interrupted" in res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]
    assert not [p for p in out.rglob(".*")]  # no half-written file
    monkeypatch.setattr(inference.SlidingWindowPredictor, "predict", real)
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert "wrote 2 mask(s)" in res.output and "kept 2 existing" in res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png", "3.png"]
