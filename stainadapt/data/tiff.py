"""Regions of a TIFF without reading the whole image: only the segments under them decode.

One reader for every TIFF the library reads in pieces: slides streamed through the
predictor (full-width row bands, converted to RGB) and the mask/probability TIFFs the
object finder walks (rectangles of one channel). It handles tiled and striped pages,
classic and BigTIFF, contiguous or planar samples, any compression tifffile/imagecodecs
decode; for a pyramid it reads level 0 (full resolution) of the first series, or the
reduced level ``level`` asked for (the :mod:`stainadapt.data.slides` reader's levels).

Interface (what a slide reader of another format provides too): ``shape`` ``(H, W)``,
``read_region(y0, y1, x0, x1) -> (h, w, S)`` in the file's dtype, ``read_rows(y0, y1) ->
(r, W, 3) uint8`` (the :func:`stainadapt.data.io.to_rgb8` rule), ``close()`` and use as
a context manager.

Decoded segments are cached. Without ``cache_segments`` the cache keeps every segment
until a :meth:`TiffReader.read_rows` call starts below it (row bands move down the image
and overlap, so each segment decodes about once); with ``cache_segments`` it keeps the
most recently used ones (for rectangles read in any order).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["RegionReader", "TiffReader"]

# Compression codes of the JPEG flavours, whose segments need the page's shared tables.
_JPEG = {6, 7, 34892, 33007}


class RegionReader(Protocol):
    """What the predictor and the object finder need of a large image."""

    shape: tuple[int, int]

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...

    def read_rows(self, y0: int, y1: int) -> np.ndarray: ...

    def close(self) -> None: ...


class TiffReader:
    """Level 0 of a TIFF, read region by region (see the module docstring).

    Raises what tifffile raises for a file it cannot parse, and ``ValueError`` for a TIFF
    without image data or a volumetric one (ImageDepth > 1).
    """

    def __init__(
        self, path: str | Path, cache_segments: int | None = None, level: int = 0
    ) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            if not self._tif.series:
                raise ValueError("no image data in TIFF")
            series = self._tif.series[0]
            levels = getattr(series, "levels", None) or [series]
            if not 0 <= level < len(levels):
                raise ValueError(f"no level {level} in TIFF ({len(levels)} levels)")
            chosen = levels[level]
            page = chosen.keyframe if hasattr(chosen, "keyframe") else chosen.pages[0]
            if page is None:
                raise ValueError("no image page in TIFF")
            if int(getattr(page, "imagedepth", 1) or 1) != 1:
                raise ValueError("volumetric TIFF (ImageDepth > 1) is not supported")
            self._page = page
            self.shape = (int(page.imagelength), int(page.imagewidth))
            self.samples = int(page.samplesperpixel)
            self.dtype = np.dtype(page.dtype)
            self._separate = int(page.planarconfig) == 2 and self.samples > 1
            self._decodeargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
            if page.compression in _JPEG:
                self._decodeargs["jpegtables"] = page.jpegtables
                self._decodeargs["jpegheader"] = page.jpegheader
            # Where each segment lies: (sample, y, x, height, width) by segment index.
            self._where: list[tuple[int, int, int, int, int]] = []
            for index in range(len(page.dataoffsets)):
                _, (s, _d, y, x, _c), shp = page.decode(None, index, _fullsize=False)
                self._where.append((int(s), int(y), int(x), int(shp[1]), int(shp[2])))
        except Exception:
            self._tif.close()
            raise
        # Segments by the image row they start on (one tile row, or one strip).
        self._rows: dict[int, list[int]] = {}
        for index, (_, y, _, _, _) in enumerate(self._where):
            self._rows.setdefault(y, []).append(index)
        self._row_starts = sorted(self._rows)
        #: Rows of one segment (a tile's height, or rows per strip).
        self.segment_rows = self._where[0][3] if self._where else self.shape[0]
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_segments = None if cache_segments is None else max(1, int(cache_segments))

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()

    def __enter__(self) -> TiffReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment(self, index: int) -> np.ndarray | None:
        """Segment ``index`` decoded, clipped to the image: ``(h, w, contiguous samples)``.

        ``None`` for a segment the file does not store (all zeros).
        """
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        page = self._page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = None
        if count > 0 and offset > 0:
            fh = self._tif.filehandle
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
        seg, _, _ = page.decode(data, index, **self._decodeargs)
        _, y, x, _, _ = self._where[index]
        if seg is not None:
            seg = seg[0, : self.shape[0] - y, : self.shape[1] - x]  # (h, w, samples)
        self._cache[index] = seg
        if self._cache_segments is not None and len(self._cache) > self._cache_segments:
            self._cache.popitem(last=False)
        return seg

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels of rows ``y0:y1`` and columns ``x0:x1`` (clipped to the image).

        Returns ``(h, w, samples)`` in the file's dtype; samples the file does not store
        are zeros.
        """
        height, width = self.shape
        y0, y1, x0, x1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        out: np.ndarray | None = None
        first = max(0, bisect.bisect_right(self._row_starts, y0) - 1)
        candidates = [i for y in self._row_starts[first:] if y < y1 for i in self._rows[y]]
        for index in candidates:
            s, sy, sx, sh, sw = self._where[index]
            ay, by = max(y0, sy), min(y1, sy + sh)
            ax, bx = max(x0, sx), min(x1, sx + sw)
            if by <= ay or bx <= ax:
                continue
            seg = self._segment(index)
            if out is None:
                dtype = seg.dtype if seg is not None else self.dtype
                out = np.zeros((h, w, self.samples), dtype=dtype)
            if seg is None:
                continue
            piece = seg[ay - sy : by - sy, ax - sx : bx - sx]
            if self._separate:
                out[ay - y0 : by - y0, ax - x0 : bx - x0, s] = piece[..., 0]
            else:
                out[ay - y0 : by - y0, ax - x0 : bx - x0, :] = piece
        if out is None:
            out = np.zeros((h, w, self.samples), dtype=self.dtype)
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Full-width rows ``y0:y1`` as ``(r, W, 3) uint8`` RGB (``data.io.to_rgb8``).

        Segments that end above ``y0`` leave the cache: bands are read top to bottom.
        """
        from .io import to_rgb8

        if self._cache_segments is None:
            for index in list(self._cache):
                _, y, _, h, _ = self._where[index]
                if y + h <= y0:
                    del self._cache[index]
        return to_rgb8(self.read_region(y0, y1, 0, self.shape[1]))
