"""Small scanner-style slides written with tifffile, for tests of slide readers and tools.

:func:`write_svs` writes an Aperio-style file (tiled pyramidal TIFF whose description
starts ``Aperio Image Library``; thumbnail, label and macro as extra pages) that
OpenSlide opens as ``aperio``; :func:`write_pyramidal_tiff` writes a generic tiled
pyramid (reduced levels as successive pages or as SubIFDs) with resolution tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_pyramidal_tiff", "write_svs"]


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter ``image`` by an integer ``factor`` (edges cropped to whole boxes)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    crop = image[: h * factor, : w * factor].astype(np.float32)
    shape = (h, factor, w, factor) + image.shape[2:]
    return np.rint(crop.reshape(shape).mean(axis=(1, 3))).astype(image.dtype)


def write_svs(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None = 0.5,
    power: float | None = 20,
    factors: Sequence[int] = (4,),
    tile: int = 256,
    associated: bool = True,
) -> Path:
    """Write ``image`` ``(H, W, 3) uint8`` as an Aperio-style slide; return the path.

    Levels: ``image`` then one per ``factors`` entry (box-filtered). With ``associated``
    a thumbnail (second page, as Aperio places it), a label and a macro (red and blue
    images, so a test sees if one is ever read as tissue).
    """
    import tifffile

    path = Path(path)
    h, w = image.shape[:2]
    fields = [f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) zlib"]
    if power is not None:
        fields.append(f"AppMag = {power:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    head = "Aperio Image Library v12.0.0 \r\n"
    opts = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(tile, tile), compression="zlib",
                 description=head + "|".join(fields), **opts)
        if associated:
            thumb = _reduce(image, max(1, max(h, w) // 256))
            tw.write(thumb, description=head + "thumbnail", **opts)
        for f in factors:
            tw.write(_reduce(image, f), tile=(tile, tile), compression="zlib",
                     description=head + f"level {f}", **opts)
        if associated:
            red = np.zeros((100, 200, 3), np.uint8)
            red[..., 0] = 255
            blue = np.zeros((120, 300, 3), np.uint8)
            blue[..., 2] = 255
            tw.write(red, description=head + "label 200x100", subfiletype=1, **opts)
            tw.write(blue, description=head + "macro 300x120", subfiletype=9, **opts)
    return path


def write_pyramidal_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None = None,
    factors: Sequence[int] = (2, 4),
    tile: int = 256,
    subifds: bool = False,
) -> Path:
    """Write ``image`` as a generic tiled pyramidal TIFF (zlib); return the path.

    ``mpp`` sets X/YResolution in pixels per centimetre. Reduced levels are successive
    pages (NewSubfileType 1), or SubIFDs of level 0 with ``subifds``.
    """
    import tifffile

    path = Path(path)
    photometric = "rgb" if image.ndim == 3 else "minisblack"
    res = {}
    if mpp is not None:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(tile, tile), compression="zlib", photometric=photometric,
                 subifds=len(factors) if subifds else None, metadata=None, **res)
        for f in factors:
            tw.write(_reduce(image, f), tile=(tile, tile), compression="zlib",
                     photometric=photometric, subfiletype=1, metadata=None)
    return path
