"""Synthetic tissue: layout, determinism, masks, stains differ, and the cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stainadapt.data import cache, synth
from stainadapt.data.folders import scan_domain
from stainadapt.data.io import read_image, read_mask
from stainadapt.errors import InputError


def test_layout_and_determinism(tmp_path):
    a = synth.generate(tmp_path / "a", n=3, size=64, seed=5)
    b = synth.generate(tmp_path / "b", n=2, size=64, seed=5)
    for stain in ("pasm", "masson"):
        samples = scan_domain(a / stain, require_masks=True, verify=True)
        assert [s.name for s in samples] == [f"{stain}_{i:04d}" for i in range(3)]
        for s in samples[:2]:  # same seed -> identical files, whatever n is
            other = b / stain / "images" / s.image.name
            assert s.image.read_bytes() == other.read_bytes()
            assert read_image(s.image).shape == (64, 64, 3)
        m = np.asarray(Image.open(samples[0].mask))
        assert set(np.unique(m)) <= {0, 255}
    readme = (a / "README.txt").read_text()
    assert "Beer-Lambert" in readme and "pasm" in readme and "masson" in readme


def test_seed_changes_output_and_stains_are_not_paired():
    img1, m1 = synth.make_tile("pasm", 96, synth.tile_rng(0, "pasm", 0))
    img2, _ = synth.make_tile("pasm", 96, synth.tile_rng(1, "pasm", 0))
    _, m3 = synth.make_tile("masson", 96, synth.tile_rng(0, "masson", 0))
    assert not np.array_equal(img1, img2)
    assert m1.shape == m3.shape == (96, 96)


def test_mask_statistics_and_colours():
    fracs, dark, blue = [], {}, {}
    for stain in ("pasm", "masson"):
        px = []
        for i in range(16):
            img, mask = synth.make_tile(stain, 128, synth.tile_rng(0, stain, i))
            if stain == "pasm":
                fracs.append(mask.mean())
            px.append(img.reshape(-1, 3).astype(float))
        px = np.concatenate(px)
        dark[stain] = (px.sum(1) < 150).mean()  # near-black (silver) pixels
        blue[stain] = ((px[:, 2] > px[:, 0] + 20) & (px[:, 2] > 120)).mean()
    fracs = np.array(fracs)
    assert (fracs == 0).any()  # some tiles without a glomerulus
    assert fracs.max() > 0.05 and fracs.max() < 0.7
    assert dark["pasm"] > 2 * dark["masson"]  # silver-black membranes in PASM only
    assert blue["masson"] > 2 * blue["pasm"]  # blue collagen in Masson only


def test_same_geometry_different_rendering():
    rng = np.random.default_rng(0)
    comp, mask, facts = synth.tissue_geometry(96, rng)
    a = synth.render(comp, "pasm", np.random.default_rng(1), facts["unit_px"])
    b = synth.render(comp, "masson", np.random.default_rng(1), facts["unit_px"])
    assert a.shape == b.shape == (96, 96, 3) and not np.array_equal(a, b)
    assert set(comp) == set(synth.COMPONENTS)


def test_generate_errors(tmp_path):
    with pytest.raises(InputError, match="unknown stain"):
        synth.generate(tmp_path, stains=["giemsa"], n=1, size=64)
    with pytest.raises(InputError, match="-n"):
        synth.generate(tmp_path, n=0, size=64)
    with pytest.raises(InputError, match="--size"):
        synth.generate(tmp_path, n=1, size=8)


def test_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STAINADAPT_CACHE", str(tmp_path / "c"))
    path = cache.default_dataset(n=2, size=64)
    assert path.parent == tmp_path / "c" and (path / "pasm" / "images").is_dir()
    assert (path / "masson" / "masks" / "masson_0001.png").is_file()
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name]  # no temp left
    stamp = (path / "README.txt").stat().st_mtime_ns
    assert cache.default_dataset(n=2, size=64) == path
    assert (path / "README.txt").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert read_mask(path / "pasm" / "masks" / "pasm_0000.png").shape == (64, 64)
    assert f"synth {path} --stain pasm" in (path / "README.txt").read_text()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv("STAINADAPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_root() == tmp_path / "stainadapt"
