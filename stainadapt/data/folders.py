"""Domain folders: ``DOMAIN/images/NAME.ext`` and ``DOMAIN/masks/NAME.ext`` paired by stem.

:func:`scan_domain` checks the whole folder before anything is trained or written and
reports every problem at once, one line per problem naming the file.

Images under :data:`MIN_SIDE` pixels on a side are refused: smaller images are
reflect-padded up to the crop size, and below 16 pixels a crop would be almost all
mirrored copies (a 16-pixel tile is already smaller than one glomerulus at any
magnification this tool is used at), so such a file is more likely a thumbnail or an
export mistake than training data. Images over the pixel limit
(:func:`~stainadapt.data.io.pixel_limit`) are refused from their header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .io import (
    IMAGE_EXTS,
    MASK_EXTS,
    check_intact,
    check_pixels,
    image_shape,
    read_image,
    read_mask,
)

__all__ = ["MIN_SIDE", "Sample", "scan_domain"]

#: Smallest image side accepted for training/validation (see the module docstring).
MIN_SIDE = 16


@dataclass(frozen=True)
class Sample:
    """One image of a domain and its mask (``None`` for unlabelled domains)."""

    name: str
    image: Path
    mask: Path | None = None


def _list(folder: Path, exts: tuple[str, ...], kind: str, problems: list[str]) -> dict:
    """Files of ``folder`` by stem; unsupported files and duplicate stems are problems."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in exts:
            problems.append(
                f"{p}: unsupported {kind} extension {p.suffix or '(none)'!r} "
                f"(expected {', '.join(exts)})"
            )
            continue
        if p.stem in found:
            problems.append(f"{p}: same name as {found[p.stem].name} (one {kind} per name)")
            continue
        found[p.stem] = p
    return found


def scan_domain(
    root: Path | str,
    require_masks: bool,
    mask_threshold: float | None = None,
    verify: bool = False,
    verify_masks: bool | None = None,
) -> list[Sample]:
    """Validate a domain folder and return its samples sorted by name.

    Sizes are compared from the file headers and every file gets a cheap completeness
    check (:func:`~stainadapt.data.io.check_intact`: truncation is caught without
    decoding); ``verify=True`` also decodes every image and mask (catches corrupt pixel
    data and masks with more than two values); ``verify_masks`` (default: ``verify``)
    decides that for the masks alone, so a caller that must not read a domain's masks
    (the target of an unsupervised run) can still verify its images.
    Raises one :class:`InputError` listing every problem found.
    """
    if verify_masks is None:
        verify_masks = verify
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected DOMAIN/images/ and DOMAIN/masks/)")
    problems: list[str] = []
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        raise InputError(f"{img_dir}: missing folder (a domain holds images/ and masks/)")
    images = _list(img_dir, IMAGE_EXTS, "image", problems)
    masks: dict[str, Path] = {}
    if mask_dir.is_dir():
        masks = _list(mask_dir, MASK_EXTS, "mask", problems)
    elif require_masks:
        problems.append(f"{mask_dir}: missing folder (masks are required for this domain)")
    if not images:
        problems.append(f"{img_dir}: no images (expected {', '.join(IMAGE_EXTS)})")
    if mask_dir.is_dir() and require_masks and not masks and images:
        problems.append(f"{mask_dir}: no masks")

    samples: list[Sample] = []
    for name, mpath in masks.items():
        if images and name not in images:  # no images at all: the one line above says so
            problems.append(f"{mpath}: mask without image (no images/{name}.*)")
    for name, ipath in images.items():
        mpath = masks.get(name)
        if mpath is None and require_masks and mask_dir.is_dir():
            problems.append(f"{ipath}: image without mask (no masks/{name}.*)")
        shape = None
        try:
            shape = image_shape(ipath)
            h, w = shape
            if min(shape) < MIN_SIDE:
                problems.append(
                    f"{ipath}: image is {w}x{h}, under the minimum side of {MIN_SIDE} pixels"
                )
                shape = None
            else:
                check_pixels(ipath, h, w)
                check_intact(ipath)
            if verify and shape is not None:
                read_image(ipath)
        except InputError as exc:
            problems.append(str(exc))
            if "--max-pixels" in str(exc):
                mpath = None  # its mask is as large: one line for the pair is enough
        if mpath is not None:
            try:
                mshape = image_shape(mpath)
                check_intact(mpath)
                if verify_masks:
                    read_mask(mpath, threshold=mask_threshold)
                if shape is not None and mshape != shape:
                    problems.append(
                        f"{mpath}: mask is {mshape[1]}x{mshape[0]} but image "
                        f"{ipath.name} is {shape[1]}x{shape[0]}"
                    )
            except InputError as exc:
                problems.append(str(exc))
        samples.append(Sample(name, ipath, mpath))
    if problems:
        head = f"{root}: {len(problems)} problem(s) in domain folder"
        raise InputError("\n".join([head, *problems]))
    return samples
