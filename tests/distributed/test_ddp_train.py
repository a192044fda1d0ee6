"""``torchrun --standalone --nproc-per-node 2 -m stainadapt train`` on CPU (gloo).

A tiny uda run (resnet18, 64 px, batch 2, one epoch per phase, two discriminators): it
finishes, rank 0 alone writes the one run folder (one metrics line per epoch, one
summary), both ranks end with bit-identical parameters (``STAINADAPT_DDP_CHECKSUM``), and
the run saved by two ranks resumes in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stainadapt.testing import make_domain

TIMEOUT = 240


def _torchrun_train(cwd, *args: str) -> subprocess.CompletedProcess:
    """``stainadapt train ARGS`` under two gloo ranks in ``cwd``; asserts it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STAINADAPT_DDP_CHECKSUM": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "stainadapt", "train", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-train")
    make_domain(root / "data" / "s", "source", n=6, size=64)
    make_domain(root / "data" / "t", "target", n=6, size=64)
    res = _torchrun_train(
        root, "--source", "data/s", "--target", "data/t", "--mode", "uda",
        "--disc", "single:layer=f4", "--disc", "shape", "--backbone", "resnet18",
        "--image-size", "64", "--batch-size", "2", "--steps-per-epoch", "2",
        "--pretrain-epochs", "1", "--disc-epochs", "1", "--adv-epochs", "1",
        "--samples", "0", "--device", "cpu", "--out", "runs/r")
    return root, res


def test_two_ranks_one_run_folder_identical_replicas(ddp_run):
    root, res = ddp_run
    assert [p.name for p in (root / "runs").iterdir()] == ["r"]
    run = root / "runs" / "r"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["phase"] for ln in lines] == ["seg", "disc", "adv"]
    assert (run / "model.safetensors").is_file() and (run / "state.pt").is_file()
    assert res.stderr.count("run folder:") == 1  # rank 1 prints nothing
    sums = [(run / f"rank{r}.checksum").read_text() for r in (0, 1)]
    assert sums[0] == sums[1] and len(sums[0].split()[0]) == 64
    assert not (run / "rank2.checksum").exists()


def test_resume_two_rank_run_in_one_process(ddp_run, monkeypatch):
    from stainadapt.engine.trainer import resume

    root, _ = ddp_run
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "STAINADAPT_DDP_CHECKSUM"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(root)  # the run's config names its data relative to here
    result = resume(root / "runs" / "r", {"adv_epochs": 2})
    assert result.epochs == 4
    lines = (root / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["phase"] for ln in lines] == ["seg", "disc", "adv", "adv"]


def test_frozen_encoder_then_released_under_two_ranks(tmp_path):
    """DDP is re-wrapped when the encoder freezes and when it is released: both ranks
    train through the switch and end with identical replicas."""
    make_domain(tmp_path / "data" / "s", "source", n=6, size=64)
    _torchrun_train(
        tmp_path, "--source", "data/s", "--mode", "source-only", "--backbone", "resnet18",
        "--image-size", "64", "--batch-size", "2", "--steps-per-epoch", "2",
        "--pretrain-epochs", "2", "--freeze-encoder-epochs", "1", "--encoder-lr-mult", "0.5",
        "--adv-epochs", "0", "--samples", "0", "--device", "cpu", "--out", "runs/r")
    run = tmp_path / "runs" / "r"
    sums = [(run / f"rank{r}.checksum").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
