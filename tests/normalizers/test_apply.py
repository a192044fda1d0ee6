"""normalize_paths: output names and formats, clashes, partial failures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stainadapt.errors import InputError, RunFailure
from stainadapt.normalizers.apply import collect_inputs, normalize_paths
from stainadapt.testing.normalizers import synthetic_he


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_he(64, seed=1)).save(tmp_path / "ref.png")
    Image.fromarray(synthetic_he(40, seed=2)).save(src / "a.jpg", quality=95)
    Image.fromarray(synthetic_he(40, seed=3)).save(src / "b.png")
    (src / ".hidden").mkdir()
    Image.fromarray(synthetic_he(40, seed=4)).save(src / ".hidden" / "c.png")
    (src / "notes.txt").write_text("not an image")
    return tmp_path


def test_jpeg_becomes_png_and_hidden_skipped(folder):
    pairs = collect_inputs([folder / "in"])
    assert [str(rel) for _, rel in pairs] == ["a.png", "b.png"]
    report = normalize_paths(
        [folder / "in"], folder / "out", reference=folder / "ref.png", device="cpu"
    )
    assert sorted(p.name for p in report.written) == ["a.png", "b.png"]
    assert np.asarray(Image.open(folder / "out" / "a.png")).shape == (40, 40, 3)


def test_clashing_outputs_are_refused(folder):
    with pytest.raises(InputError, match="would overwrite"):
        collect_inputs([folder / "in" / "b.png", folder / "in"])


def test_corrupt_file_fails_the_run_but_others_are_written(folder):
    (folder / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(RunFailure, match="1 of 3 image"):
        normalize_paths([folder / "in"], folder / "out", reference=folder / "ref.png", device="cpu")
    assert (folder / "out" / "a.png").is_file() and (folder / "out" / "b.png").is_file()
