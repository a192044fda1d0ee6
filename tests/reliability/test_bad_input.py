"""Bad input through the real CLI: one clear line per problem (file and reason), exit
code 2, and nothing written. Odd but valid images (RGBA, 16-bit, grey) are converted.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.data.folders import scan_domain
from stainadapt.data.io import MAX_PIXELS_ENV, read_image

RNG = np.random.default_rng(3)


def _image(size: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mask(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[size // 4 : size // 2, size // 4 : size // 2] = 255
    return m


def _domain(root: Path, n: int = 3) -> Path:
    """A good labelled domain: ``a0..`` as PNG, masks as PNG."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(_image()).save(root / "images" / f"a{i}.png")
        Image.fromarray(_mask()).save(root / "masks" / f"a{i}.png")
    return root


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, arr, photometric="rgb", compression="zlib")
    else:
        Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _corrupt_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]


# Each case breaks one file of a good domain and names the file and the reason expected.
def _replace_image(name: str, data: bytes) -> Callable[[Path], str]:
    def apply(root: Path) -> str:
        (root / "images" / "a1.png").unlink()
        (root / "images" / name).write_bytes(data)
        return name

    return apply


def _replace_mask(arr: np.ndarray) -> Callable[[Path], str]:
    def apply(root: Path) -> str:
        Image.fromarray(arr).save(root / "masks" / "a1.png")
        return "a1.png"

    return apply


PNG, JPEG, TIFF = (_encoded(_image(), f) for f in ("PNG", "JPEG", "TIFF"))
CASES = {
    "truncated png": (_replace_image("a1.png", PNG[: len(PNG) // 2]), "truncated"),
    "truncated jpeg": (_replace_image("a1.jpg", JPEG[: len(JPEG) // 2]), "truncated"),
    "truncated tiff": (_replace_image("a1.tif", TIFF[:-300]), "truncated"),
    "corrupt png": (_replace_image("a1.png", _corrupt_middle(PNG)), "cannot read"),
    "corrupt jpeg header": (_replace_image("a1.jpg", JPEG[:2] + b"\x00" * 200 + JPEG[202:]),
                            "cannot read"),
    "corrupt tiff data": (_replace_image("a1.tif", _corrupt_middle(TIFF)), "cannot read TIFF"),
    "text named .png": (_replace_image("a1.png", b"just some notes, not a picture\n"),
                        "cannot read"),
    "zero-byte image": (_replace_image("a1.png", b""), "empty file (0 bytes)"),
    "zero-byte mask": (lambda root: (root / "masks" / "a1.png").write_bytes(b"") or "a1.png",
                       "empty file (0 bytes)"),
    "mask of another size": (_replace_mask(_mask(96)), "mask is 96x96 but image a1.png is 64x64"),
    "mask with three values": (_replace_mask((np.arange(64 * 64) % 3 * 100).astype(np.uint8)
                                             .reshape(64, 64)), "3 distinct values"),
    "image under the minimum size": (
        lambda root: (Image.fromarray(_image(8)).save(root / "images" / "a1.png"),
                      Image.fromarray(_mask(8)).save(root / "masks" / "a1.png"), "a1.png")[-1],
        "under the minimum side of 16 pixels"),
}


def _train(*args: str):
    return CliRunner().invoke(app, [*args])


def _tiny_train_args(source: Path, out: Path) -> list[str]:
    return ["train", "--source", str(source), "--mode", "source-only", "--backbone", "resnet18",
            "--image-size", "64", "--batch-size", "2", "--steps-per-epoch", "1",
            "--pretrain-epochs", "0", "--adv-epochs", "0", "--samples", "0", "--device", "cpu",
            "--out", str(out)]


def _assert_clear_error(res, *needles: str) -> list[str]:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    text = "\n".join(lines)
    for needle in needles:
        assert needle in text, (needle, res.output)
    return lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    root = _domain(tmp_path / "src")
    breaker, reason = CASES[case]
    name = breaker(root)
    out = tmp_path / "run"
    res = _train(*_tiny_train_args(root, out))
    lines = _assert_clear_error(res, reason)
    problem = [ln for ln in lines if reason in ln]
    assert len(problem) == 1 and name in problem[0], res.output  # one line: file + reason
    assert not out.exists()


def test_odd_but_valid_images_are_converted_and_train(tmp_path):
    root = _domain(tmp_path / "src", n=0)
    rgb = _image()
    Image.fromarray(np.dstack([rgb, np.full((64, 64), 9, np.uint8)])).save(
        root / "images" / "rgba.png")
    tifffile.imwrite(root / "images" / "deep.tif", rgb.astype(np.uint16) * 257,
                     photometric="rgb")
    Image.fromarray(rgb[:, :, 0]).save(root / "images" / "grey.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(root / "images" / "grey16.png")
    for stem in ("rgba", "deep", "grey", "grey16"):
        Image.fromarray(_mask()).save(root / "masks" / f"{stem}.png")
    samples = scan_domain(root, require_masks=True, verify=True)
    for s in samples:
        arr = read_image(s.image)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert np.array_equal(read_image(root / "images" / "deep.tif"), rgb)
    res = _train(*_tiny_train_args(root, tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_unknown_plugin_lists_the_known_ones(tmp_path):
    root = _domain(tmp_path / "src")
    args = _tiny_train_args(root, tmp_path / "run")
    args[args.index("source-only")] = "uda"
    res = _train(*args, "--target", str(root), "--disc", "nosuch")
    _assert_clear_error(res, "unknown discriminators plugin 'nosuch'", "known:", "mirrored")
    assert not (tmp_path / "run").exists()


def test_bad_spec_option_lists_the_accepted_ones(tmp_path):
    root = _domain(tmp_path / "src")
    args = _tiny_train_args(root, tmp_path / "run")
    args[args.index("source-only")] = "uda"
    res = _train(*args, "--target", str(root), "--disc", "single:depth=3")
    _assert_clear_error(res, "has no option 'depth'", "accepted options:", "layer")
    assert not (tmp_path / "run").exists()


def test_config_with_unknown_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('source = "x"\nlearnig_rate = 0.1\n')
    res = _train("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    lines = _assert_clear_error(res, str(cfg), "unknown key 'learnig_rate'", "valid keys")
    assert len(lines) == 1
    assert not (tmp_path / "run").exists()


def test_run_folder_without_model(tmp_path):
    Image.fromarray(_image()).save(tmp_path / "a.png")
    (tmp_path / "empty-run").mkdir()
    for cmd in (["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "empty-run"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"],
                ["train", "--resume", str(tmp_path / "empty-run")]):
        res = _train(*cmd)
        lines = _assert_clear_error(res, str(tmp_path / "empty-run"))
        assert len(lines) == 1
    assert not (tmp_path / "out").exists()


def test_max_pixels_option_refuses_and_can_be_raised(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # restored after the test: the CLI sets it
    root = _domain(tmp_path / "src")
    res = _train("--max-pixels", "1000", *_tiny_train_args(root, tmp_path / "run"))
    lines = _assert_clear_error(res, "4096 pixels, more than the limit 1000", "--max-pixels")
    assert sum("a0.png" in ln for ln in lines) == 1
    assert not (tmp_path / "run").exists()
    res = _train("--max-pixels", "5000", *_tiny_train_args(root, tmp_path / "run"))
    assert res.exit_code == 0, res.output
    shutil.rmtree(tmp_path / "run")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the environment variable alone
    res = _train(*_tiny_train_args(root, tmp_path / "run"))
    _assert_clear_error(res, "more than the limit 1000")
    res = _train("--max-pixels", "lots", "evaluate", str(root), str(root))
    assert res.exit_code == 2  # Click's own usage error
    res = _train("--max-pixels", "-5", "evaluate", str(root), str(root))
    _assert_clear_error(res, "--max-pixels: -5 must be at least 0")
