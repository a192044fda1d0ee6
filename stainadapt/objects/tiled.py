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

from pathlib import Path

import numpy as np

from ..data.tiff import TiffReader
from ..errors import InputError
from .instances import EIGHT, Component, GlomerulusObject, InstanceOptions, objects_from_components

__all__ = ["components_from_tiff", "objects_from_tiff", "open_mask_tiff", "read_mask_region"]


def open_mask_tiff(path: str | Path, cache_tiles: int = 256) -> TiffReader:
    """A one-channel 8-bit mask/probability TIFF, read rectangle by rectangle.

    Decoded segments are kept in an LRU cache of ``cache_tiles`` entries. A file that
    is not a readable TIFF, or not one channel of uint8, is an InputError.
    """
    path = Path(path)
    try:
        reader = TiffReader(path, cache_segments=cache_tiles)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: not a readable TIFF ({exc})") from None
    if reader.samples != 1 or reader.dtype != np.uint8:
        reader.close()
        raise InputError(f"{path}: expected a one-channel 8-bit mask TIFF")
    return reader


def read_mask_region(reader: TiffReader, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(y1 - y0, x1 - x0) uint8``: a rectangle of a mask TIFF (clipped to the image)."""
    return reader.read_region(y0, y1, x0, x1)[..., 0]


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
    reader: TiffReader, band: int | None = None, level: int = 128
) -> list[Component]:
    """Pass 1: the 8-connected components of ``reader``'s mask (pixels ``>= level``)."""
    from scipy import ndimage as ndi

    height, width = reader.shape
    band = int(band or reader.segment_rows)
    if band < 1:
        raise InputError(f"band {band}: must be at least 1 row")
    uf = _UnionFind()
    stats: list[np.ndarray] = []  # per band: (n, 7) y0, x0, y1, x1, pixels, seed_y, seed_x
    prev_row: np.ndarray | None = None  # global labels of the last row of the band above
    offset = 0
    for y in range(0, height, band):
        mask = read_mask_region(reader, y, min(height, y + band), 0, width) >= level
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
    with open_mask_tiff(mask_path) as masks:
        probs = open_mask_tiff(prob_path) if prob_path is not None else None
        try:
            if probs is not None and probs.shape != masks.shape:
                raise InputError(
                    f"{prob_path}: size {probs.shape} differs from the mask {masks.shape}"
                )
            comps = components_from_tiff(masks, band)

            def crop(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
                m = read_mask_region(masks, y0, y1, x0, x1) >= 128
                p = None
                if probs is not None:
                    p = read_mask_region(probs, y0, y1, x0, x1).astype(np.float32) / 255.0
                return m, p

            return objects_from_components(comps, crop, options, notes)
        finally:
            if probs is not None:
                probs.close()
