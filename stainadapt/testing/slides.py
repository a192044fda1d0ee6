"""Small scanner-style slides written with tifffile, for tests of slide readers and tools.

:func:`write_svs` writes an Aperio-style file (tiled pyramidal TIFF whose description
starts ``Aperio Image Library``; thumbnail, label and macro as extra pages) that
OpenSlide opens as ``aperio``; :func:`write_pyramidal_tiff` writes a generic tiled
pyramid (reduced levels as successive pages or as SubIFDs) with resolution tags.

``write_svs`` also takes, instead of an array, a function that draws any box of any
level (:data:`Pixels`): the file is then written tile by tile, so a slide of any size
(a 40000 px benchmark slide) is built without holding its pixels in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["Pixels", "write_pyramidal_tiff", "write_svs"]

#: ``pixels(x, y, w, h, factor) -> (h, w, 3) uint8``: the box of the level ``factor``
#: times coarser than level 0 whose top-left is that level's pixel ``(x, y)``.
Pixels = Callable[[int, int, int, int, int], np.ndarray]


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter ``image`` by an integer ``factor`` (edges cropped to whole boxes)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    crop = image[: h * factor, : w * factor].astype(np.float32)
    shape = (h, factor, w, factor) + image.shape[2:]
    return np.rint(crop.reshape(shape).mean(axis=(1, 3))).astype(image.dtype)


_HEAD = "Aperio Image Library v12.0.0 \r\n"


def _first_description(w: int, h: int, tile: int, compression: str, power: float | None,
                       mpp: float | None) -> str:
    """Level 0's ImageDescription, as Aperio writes it (OpenSlide reads mpp and power)."""
    fields = [f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {compression}"]
    if power is not None:
        fields.append(f"AppMag = {power:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    return _HEAD + "|".join(fields)


def _label_and_macro(tw: object, opts: dict) -> None:
    """A red label and a blue macro (a test sees if one is ever read as tissue)."""
    red = np.zeros((100, 200, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((120, 300, 3), np.uint8)
    blue[..., 2] = 255
    tw.write(red, description=_HEAD + "label 200x100", subfiletype=1, **opts)  # type: ignore[attr-defined]
    tw.write(blue, description=_HEAD + "macro 300x120", subfiletype=9, **opts)  # type: ignore[attr-defined]


def _tiles(pixels: Pixels, shape: tuple[int, int], factor: int, tile: int
           ) -> Iterator[np.ndarray]:
    """Level ``factor`` of ``pixels`` as full ``tile``-square tiles, row-major."""
    h, w = shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            yield np.ascontiguousarray(pixels(x, y, tile, tile, factor), dtype=np.uint8)


def write_svs(
    path: str | Path,
    image: np.ndarray | Pixels,
    mpp: float | None = 0.5,
    power: float | None = 20,
    factors: Sequence[int] = (4,),
    tile: int = 256,
    associated: bool = True,
    compression: str = "zlib",
    shape: tuple[int, int] | None = None,
) -> Path:
    """Write ``image`` ``(H, W, 3) uint8`` as an Aperio-style slide; return the path.

    Levels: ``image`` then one per ``factors`` entry (box-filtered). With ``associated``
    a thumbnail (second page, as Aperio places it), a label and a macro (red and blue
    images, so a test sees if one is ever read as tissue). ``compression``: any tifffile
    codec OpenSlide also decodes (``"zlib"``, ``"jpeg"`` as scanners write).

    ``image`` may instead be a :data:`Pixels` function, with the level-0 ``shape``
    ``(H, W)``: every level (``H // factor`` by ``W // factor``) and the thumbnail are
    then drawn by it tile by tile, never held whole.
    """
    if callable(image):
        if shape is None:
            raise ValueError("write_svs: a pixels function needs shape=(H, W)")
        return _write_svs_drawn(path, image, shape, mpp, power, factors, tile, associated,
                                compression)
    import tifffile

    path = Path(path)
    h, w = image.shape[:2]
    head = _HEAD
    first = _first_description(w, h, tile, compression, power, mpp)
    opts = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(tile, tile), compression=compression,
                 description=first, **opts)
        if associated:
            thumb = _reduce(image, max(1, max(h, w) // 256))
            tw.write(thumb, description=head + "thumbnail", **opts)
        for f in factors:
            tw.write(_reduce(image, f), tile=(tile, tile), compression=compression,
                     description=head + f"level {f}", **opts)
        if associated:
            _label_and_macro(tw, opts)
    return path


def _write_svs_drawn(path: str | Path, pixels: Pixels, shape: tuple[int, int],
                     mpp: float | None, power: float | None, factors: Sequence[int],
                     tile: int, associated: bool, compression: str) -> Path:
    """:func:`write_svs` for a :data:`Pixels` function (same pages, drawn tile by tile)."""
    import tifffile

    path = Path(path)
    h, w = shape
    head = _HEAD
    first = _first_description(w, h, tile, compression, power, mpp)
    opts = {"photometric": "rgb", "metadata": None}
    rgb = {"dtype": np.uint8, "tile": (tile, tile), "compression": compression}
    with tifffile.TiffWriter(path, bigtiff=h * w * 3 >= 2**31) as tw:
        tw.write(data=_tiles(pixels, shape, 1, tile), shape=(h, w, 3),
                 description=first, **rgb, **opts)
        if associated:
            f = max(1, max(h, w) // 256)
            tw.write(pixels(0, 0, w // f, h // f, f), description=head + "thumbnail", **opts)
        for f in factors:
            level = (h // f, w // f)
            tw.write(data=_tiles(pixels, level, f, tile), shape=level + (3,),
                     description=head + f"level {f}", **rgb, **opts)
        if associated:
            _label_and_macro(tw, opts)
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
