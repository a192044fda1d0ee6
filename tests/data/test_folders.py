"""Domain-folder validation: every problem is reported, one line each, naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from stainadapt.data.folders import Sample, scan_domain
from stainadapt.data.io import write_image
from stainadapt.errors import InputError

IMG = np.full((32, 40, 3), 200, np.uint8)
MASK = np.zeros((32, 40), np.uint8)


def make_domain(root, names=("a", "b"), masks=True):
    for n in names:
        write_image(root / "images" / f"{n}.png", IMG)
        if masks:
            write_image(root / "masks" / f"{n}.png", MASK)
    return root


def test_good_domain(tmp_path):
    root = make_domain(tmp_path / "d")
    samples = scan_domain(root, require_masks=True)
    assert [s.name for s in samples] == ["a", "b"]
    assert samples[0] == Sample("a", root / "images" / "a.png", root / "masks" / "a.png")
    assert scan_domain(root, require_masks=False, verify=True)[1].mask is not None


def test_unlabelled_domain(tmp_path):
    root = make_domain(tmp_path / "d", masks=False)
    assert all(s.mask is None for s in scan_domain(root, require_masks=False))
    with pytest.raises(InputError, match="masks"):
        scan_domain(root, require_masks=True)


def test_all_problems_listed(tmp_path):
    root = make_domain(tmp_path / "d", names=("ok", "lonely", "small", "cut"))
    (root / "masks" / "lonely.png").unlink()  # image without mask
    write_image(root / "masks" / "orphan.png", MASK)  # mask without image
    write_image(root / "masks" / "small.png", MASK[:16])  # size differs
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])  # truncated
    (root / "images" / "notes.txt").write_text("hello")  # unsupported extension
    (root / "images" / "fake.png").write_text("not a png")  # unreadable
    write_image(root / "masks" / "fake.png", MASK)
    with pytest.raises(InputError) as info:
        scan_domain(root, require_masks=True)
    lines = str(info.value).splitlines()
    assert "6 problem" in lines[0]
    body = "\n".join(lines[1:])
    for needle in [
        "lonely.png: image without mask",
        "orphan.png: mask without image",
        "small.png: mask is 40x16",
        "cut.png: ",
        "notes.txt: unsupported",
        "fake.png: cannot read",
    ]:
        assert needle in body, needle
    assert len(lines) == 7


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        scan_domain(tmp_path / "empty", require_masks=False)
    with pytest.raises(InputError, match="not a folder"):
        scan_domain(tmp_path / "missing", require_masks=False)
    (tmp_path / "noimg").mkdir()
    with pytest.raises(InputError, match="images"):
        scan_domain(tmp_path / "noimg", require_masks=False)


def test_empty_images_folder_is_one_line(tmp_path):
    root = make_domain(tmp_path / "d", names=("a", "b", "c"))
    for image in (root / "images").iterdir():
        image.unlink()
    with pytest.raises(InputError) as info:
        scan_domain(root, require_masks=True)
    lines = str(info.value).splitlines()
    assert "1 problem" in lines[0] and len(lines) == 2, lines
    assert lines[1].startswith(f"{root / 'images'}: no images")
    assert "without image" not in str(info.value)


def test_verify_mask_values(tmp_path):
    root = make_domain(tmp_path / "d", names=("a",))
    write_image(root / "masks" / "a.png", (np.arange(32 * 40) % 3).astype(np.uint8).reshape(32, 40))
    scan_domain(root, require_masks=True)  # header-only: fine
    with pytest.raises(InputError, match="distinct values"):
        scan_domain(root, require_masks=True, verify=True)
    assert len(scan_domain(root, require_masks=True, mask_threshold=0, verify=True)) == 1
