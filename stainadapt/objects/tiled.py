"""Glomerulus objects of masks too large for memory (the streamed TIFFs of ``predict``).

Two passes over the tiled mask TIFF that ``stainadapt predict`` writes for big slides:

1. **Components, band by band.** The mask is read in full-width bands of ``band``
   rows (default: one row of TIFF tiles). Each band is labelled on its own
   (8-connected); a union-find joins labels whose pixels touch across the border to the
   previous band (same column or a diagonal neighbour). Per label it keeps the bounding
   box, the pixel count and one seed pixel. So a glomerulus cut by a tile or band edge
   is one component, with the union of its pieces' boxes.
2. **Objects, component by component.** Each component large enough to keep is re-read
   from the TIFF (only the tiles under its bounding box are decoded; a small LRU cache
   holds recent tiles) together with the probability TIFF, and goes through exactly the
   same code as an in-memory mask (:func:`.instances.objects_from_components`): hole
   filling, watershed split, measurements, outline. In-memory and tiled results are
   therefore identical, except for the mean probability, which the tiled path reads
   from the 8-bit probability TIFF (to within 1/255).

Memory: one band (``band x width`` bytes of mask plus ``4 x`` that for its labels),
the per-label statistics (a few integers per piece of a component per band), the tile
cache (``cache_tiles`` tiles of each TIFF), and one component's bounding box at a time
(components with a box over ``max_object_pixels`` are skipped with a note). The
polygons of all objects are kept until written.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .instances import EIGHT, Component, GlomerulusObject, InstanceOptions, objects_from_components

__all__ = ["TiffRegionReader", "components_from_tiff", "objects_from_tiff"]


class TiffRegionReader:
    """Rectangles of a one-channel 8-bit TIFF (tiled or striped), decoding only what is hit.

    ``read(y0, y1, x0, x1) -> (y1 - y0, x1 - x0) uint8``. Decoded segments are kept in
    an LRU cache of ``cache_tiles`` entries.
    """

    def __init__(self, path: str | Path, cache_tiles: int = 256) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (OSError, ValueError, IndexError, KeyError) as exc:
            raise InputError(f"{self.path}: not a readable TIFF ({exc})") from None
        try:
            if not len(self._tif.pages):
                raise InputError(f"{self.path}: no image in the TIFF")
            page = self._tif.pages[0]
            if int(page.samplesperpixel) != 1 or page.dtype != np.uint8:
                raise InputError(f"{self.path}: expected a one-channel 8-bit mask TIFF")
            self._page = page
            self.shape = (int(page.imagelength), int(page.imagewidth))
            if page.is_tiled:
                self._seg = (int(page.tilelength), int(page.tilewidth))
            else:  # strips span the width; the last one may be shorter
                rows = int(page.rowsperstrip or self.shape[0])
                self._seg = (max(1, min(rows, self.shape[0])), self.shape[1])
            self._across = -(-self.shape[1] // self._seg[1])
            self._args: dict[str, Any] = {"_fullsize": True}
            if page.compression in {6, 7, 34892, 33007}:
                self._args["jpegtables"] = page.jpegtables
                self._args["jpegheader"] = page.jpegheader
        except Exception:
            self._tif.close()
            raise
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_tiles = max(1, int(cache_tiles))

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()

    def __enter__(self) -> TiffRegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment(self, index: int) -> np.ndarray:
        seg = self._cache.get(index)
        if seg is not None:
            self._cache.move_to_end(index)
            return seg
        page = self._page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = None
        if count > 0 and offset > 0:
            fh = self._tif.filehandle
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
        out, _, _ = page.decode(data, index, **self._args)
        sh, sw = self._seg
        if out is None:
            seg = np.zeros((sh, sw), dtype=np.uint8)
        else:
            seg = np.asarray(out).reshape(out.shape[-3], out.shape[-2])[:sh, :sw]
        self._cache[index] = seg
        if len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)
        return seg

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels of rows ``y0:y1`` and columns ``x0:x1`` (clipped to the image)."""
        h, w = self.shape
        y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), dtype=np.uint8)
        sh, sw = self._seg
        for ty in range(y0 // sh, -(-y1 // sh)):
            for tx in range(x0 // sw, -(-x1 // sw)):
                seg = self._segment(ty * self._across + tx)
                sy, sx = ty * sh, tx * sw
                ay, by = max(y0, sy), min(y1, sy + seg.shape[0])
                ax, bx = max(x0, sx), min(x1, sx + seg.shape[1])
                if by > ay and bx > ax:
                    out[ay - y0 : by - y0, ax - x0 : bx - x0] = seg[
                        ay - sy : by - sy, ax - sx : bx - sx
                    ]
        return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def add(self, n: int) -> None:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def components_from_tiff(
    reader: TiffRegionReader, band: int | None = None, level: int = 128
) -> list[Component]:
    """Pass 1: the 8-connected components of ``reader``'s mask (pixels ``>= level``)."""
    from scipy import ndimage as ndi

    height, width = reader.shape
    band = int(band or reader._seg[0])
    if band < 1:
        raise InputError(f"band {band}: must be at least 1 row")
    uf = _UnionFind()
    stats: list[np.ndarray] = []  # per band: (n, 7) y0, x0, y1, x1, pixels, seed_y, seed_x
    prev_row: np.ndarray | None = None  # global labels of the last row of the band above
    offset = 0
    for y in range(0, height, band):
        mask = reader.read(y, min(height, y + band), 0, width) >= level
        labels, n = ndi.label(mask, structure=EIGHT)
        if n:
            counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            values, index = np.unique(labels.ravel(), return_index=True)
            first = np.zeros(n + 1, dtype=np.int64)
            first[values] = index
            first = first[1:]
            rows = np.empty((n, 7), dtype=np.int64)
            for i, sl in enumerate(ndi.find_objects(labels)):
                rows[i, :4] = (y + sl[0].start, sl[1].start, y + sl[0].stop, sl[1].stop)
            rows[:, 4] = counts
            rows[:, 5] = y + first // width
            rows[:, 6] = first % width
            stats.append(rows)
            uf.add(n)
        if prev_row is not None and n:
            top = np.where(labels[0] > 0, labels[0].astype(np.int64) + offset, 0)
            for shift in (-1, 0, 1):
                if shift < 0:
                    a, b = prev_row[:shift], top[-shift:]
                elif shift > 0:
                    a, b = prev_row[shift:], top[:-shift]
                else:
                    a, b = prev_row, top
                hit = (a > 0) & (b > 0)
                if hit.any():
                    pairs = np.unique(np.stack([a[hit], b[hit]], axis=1), axis=0)
                    for p, q in pairs.tolist():
                        uf.union(p, q)
        prev_row = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + offset, 0)
        offset += n
    if not stats:
        return []
    table = np.concatenate(stats)
    roots = np.array([uf.find(i + 1) for i in range(offset)], dtype=np.int64)
    merged: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        y0, x0, y1, x1, px, sy, sx = table[i].tolist()
        m = merged.get(r)
        if m is None:
            merged[r] = [y0, x0, y1, x1, px, sy, sx]
        else:
            m[0], m[1] = min(m[0], y0), min(m[1], x0)
            m[2], m[3] = max(m[2], y1), max(m[3], x1)
            m[4] += px
    return [Component(m[0], m[1], m[2], m[3], m[4], (m[5], m[6])) for m in merged.values()]


def objects_from_tiff(
    mask_path: str | Path,
    prob_path: str | Path | None = None,
    options: InstanceOptions | None = None,
    notes: list[str] | None = None,
    band: int | None = None,
) -> list[GlomerulusObject]:
    """Glomerulus objects of a (tiled) mask TIFF, in bounded memory (module docstring).

    ``prob_path``: the uint8 probability TIFF of the same slide (for mean probabilities).
    """
    options = options or InstanceOptions()
    with TiffRegionReader(mask_path) as masks:
        probs = TiffRegionReader(prob_path) if prob_path is not None else None
        try:
            if probs is not None and probs.shape != masks.shape:
                raise InputError(
                    f"{prob_path}: size {probs.shape} differs from the mask {masks.shape}"
                )
            comps = components_from_tiff(masks, band)

            def crop(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
                m = masks.read(y0, y1, x0, x1) >= 128
                p = None
                if probs is not None:
                    p = probs.read(y0, y1, x0, x1).astype(np.float32) / 255.0
                return m, p

            return objects_from_components(comps, crop, options, notes)
        finally:
            if probs is not None:
                probs.close()
