"""Sharded prediction under torchrun (2 CPU processes, gloo) writes the one-process bytes.

Two launches: ``torchrun -m stainadapt predict`` on a folder of PNGs and a small TIFF
(files dealt out to the ranks), and a script calling ``predict_paths`` with a low
streaming threshold, so one TIFF is shared band by band between the ranks and written
by rank 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from stainadapt.engine.checkpoint import save_model
from stainadapt.inference import predict_paths
from stainadapt.models.unet import SegmentationNet

TIMEOUT = 240


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def image(h: int, w: int, seed: int) -> np.ndarray:
    """Dark blobs on tissue-coloured ground, with a band of bright glass (skipped windows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 190.0)
    img[:, : w // 2] = 245.0  # glass
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 30)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(40, 110, 3)
    img += rng.normal(0, 5, img.shape)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-predict")
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    save_model(root / "run", net, {"image_size": 64})
    (root / "in").mkdir()
    for i in range(5):
        Image.fromarray(image(70 + 9 * i, 90, seed=i)).save(root / "in" / f"p{i}.png")
    tifffile.imwrite(root / "in" / "small.tif", image(80, 100, seed=9), photometric="rgb")
    tifffile.imwrite(root / "slide.tif", image(300, 230, seed=11), photometric="rgb",
                     tile=(64, 64))
    return root


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_file_sharding_cli_matches_one_process(setup):
    root = setup
    res = torchrun("-m", "stainadapt", "predict", "in", "--model", "run", "--out", "ddp",
                   "--device", "cpu", "--probabilities", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("wrote 6 mask(s)") == 1, res.stderr  # rank 0 reports, once
    one = predict_paths([root / "in"], root / "run", root / "one", device="cpu",
                        probabilities=True)
    assert len(one.written) == 6 and not one.failed
    got, want = outputs(root / "ddp"), outputs(root / "one")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


SCRIPT = textwrap.dedent('''
    import json, sys
    from stainadapt.inference import predict_paths
    report = predict_paths([sys.argv[1]], sys.argv[2], sys.argv[3], device="cpu",
                           stream_min_pixels=0, probabilities=True, batch_size=2)
    print("REPORT", json.dumps({"written": [str(p) for p in report.written],
                                "failed": [str(p) for p, _ in report.failed],
                                "tiles": report.tiles_total,
                                "skipped": report.tiles_skipped}))
''')


def test_one_tiff_shared_by_ranks_matches_one_process(setup):
    root = setup
    (root / "shard.py").write_text(SCRIPT)
    res = torchrun("shard.py", "slide.tif", "run", "ddp-slide", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    reports = [ln for ln in res.stdout.splitlines() if ln.startswith("REPORT")]
    assert len(reports) == 2 and reports[0] == reports[1]  # every rank: the whole report
    one = predict_paths([root / "slide.tif"], root / "run", root / "one-slide", device="cpu",
                        stream_min_pixels=0, probabilities=True, batch_size=2)
    assert one.tiles_skipped > 0  # the glass band exercises the skip flags
    assert f'"tiles": {one.tiles_total}, "skipped": {one.tiles_skipped}' in reports[0]
    got, want = outputs(root / "ddp-slide"), outputs(root / "one-slide")
    assert sorted(want) == ["probabilities/slide.tif", "slide.tif"]
    assert got == want
