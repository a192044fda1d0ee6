"""Where a slide's training tiles go: glomerulus tiles, random tissue tiles, tissue.

What :func:`plan_tiles` decides (``stainadapt tiles`` then cuts and writes the tiles,
:mod:`stainadapt.data.tiles`):

* **glomerulus tiles**: one centred on every annotated glomerulus (the centre rule of
  training's foreground-aware crops, :func:`~stainadapt.data.annotations.annotation_centre`),
  shifted inside the slide where it would cross the border. Its mask holds every
  annotated glomerulus it overlaps.
* **random tiles**: ``negatives`` per glomerulus tile, placed at random on tissue inside
  the regions known to be fully annotated, so that their masks are right: inside a
  region-of-interest polygon (class ``Region*`` by default), or anywhere on the slide
  with ``fully_annotated``. A random tile lies wholly inside such a region and is not
  kept away from glomeruli: one that overlaps a glomerulus is still correctly labelled,
  because its mask holds it. Most random tiles hold no glomerulus, which is what they
  are for: they show G the tubules, vessels and interstitium it must call background.
  Random tiles keep at least half a tile apart (centre to centre) from each other.
* **unlabelled slides** (no annotation file): ``tiles_per_slide`` random tissue tiles
  anywhere on the slide, images only (a target domain).

Tissue: the slide's :class:`~stainadapt.data.tissue.TissueMap`, the mask ``predict``
skips glass with (:func:`stainadapt.data.tissue.tissue_mask` on the slide's thumbnail);
a random tile needs a ``min_tissue`` fraction of tissue under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .annotations import DEFAULT_ROI_CLASS, AnnotationSet, annotation_centre, rasterize
from .tissue import TissueMap

__all__ = ["PlannedTile", "TileOptions", "plan_tiles"]


@dataclass(frozen=True)
class TileOptions:
    """What ``stainadapt tiles`` cuts (see the module docstring).

    Attributes:
        mpp: microns per pixel of the tiles.
        size: tile side in pixels.
        glomerulus_class: class pattern of glomeruli (``None``: every polygon that is
            not a region of interest).
        roi_class: class pattern of regions of interest (``None``: none).
        negatives: random tiles per glomerulus tile, from fully annotated regions.
        fully_annotated: every glomerulus of the slides is annotated, so random tiles
            may come from anywhere on the slide.
        tiles_per_slide: random tiles of an unlabelled slide.
        min_tissue: smallest tissue fraction of a random tile.
        slide_mpp: resolution of slides that record none.
        bounds_origin: annotation coordinates start at the slide's scanned-area bounds
            where OpenSlide reports them (``openslide.bounds-x``/``-y``, MRXS and a few
            other formats), as QuPath opens such slides; ``False``: at the full slide's
            corner.
        seed: random placement; a slide's tiles depend on the seed and its name only.
        overwrite: redo tiles that exist already.
    """

    mpp: float = 0.5
    size: int = 512
    glomerulus_class: str | None = None
    roi_class: str | None = DEFAULT_ROI_CLASS
    negatives: float = 0.5
    fully_annotated: bool = False
    tiles_per_slide: int = 50
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    bounds_origin: bool = True
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise InputError(f"--mpp {self.mpp}: must be above 0")
        if self.size < 16:
            raise InputError(f"--size {self.size}: must be at least 16 pixels")
        if not self.negatives >= 0:
            raise InputError(f"--negatives {self.negatives}: must be 0 or more")
        if self.tiles_per_slide < 0:
            raise InputError(f"--tiles-per-slide {self.tiles_per_slide}: must be 0 or more")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InputError(f"--min-tissue {self.min_tissue}: must be in [0, 1]")
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise InputError(f"--slide-mpp {self.slide_mpp}: must be above 0")


@dataclass(frozen=True)
class PlannedTile:
    """A tile's level-0 box: top-left ``(x, y)`` (integers) and side ``side`` (float)."""

    x: int
    y: int
    side: float
    kind: str  # "glomerulus", "random" or "unlabelled"

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (float(self.x), float(self.y), self.side, self.side)


# ------------------------------------------------------------------------------ planning


def _clip(c: float, side: float, limit: int) -> int:
    """Top-left coordinate of a ``side`` box centred on ``c``, kept inside ``[0, limit]``."""
    return int(min(max(round(c - side / 2.0), 0), math.floor(limit - side)))


def plan_tiles(
    annotations: AnnotationSet | None,
    dimensions: tuple[int, int],
    side: float,
    options: TileOptions,
    rng: np.random.Generator,
    tissue: TissueMap | None = None,
) -> tuple[list[PlannedTile], list[str]]:
    """Where a slide's tiles go (see the module docstring), and notes for the user.

    ``dimensions`` is the slide's level-0 ``(width, height)``, ``side`` a tile's side in
    level-0 pixels; ``tissue`` the slide's tissue map (``None``: all tissue).
    """
    width, height = int(dimensions[0]), int(dimensions[1])
    if side > width or side > height:
        raise InputError(
            f"slide is {width}x{height} pixels at level 0, smaller than one tile "
            f"({side:.0f} level-0 pixels for {options.size} px at {options.mpp} um/px)"
        )
    tiles: list[PlannedTile] = []
    notes: list[str] = []
    if annotations is not None:
        scale = 1.0 / (side / options.size)
        for geom in annotations.glomeruli:
            cx, cy = annotation_centre(geom, scale)
            tiles.append(
                PlannedTile(_clip(cx, side, width), _clip(cy, side, height), side, "glomerulus")
            )
        if not tiles:
            notes.append("no glomerulus annotated: no tiles (random tiles are "
                         "--negatives per glomerulus tile)")
        wanted = int(math.floor(options.negatives * len(tiles) + 0.5))
        kind = "random"
        if options.fully_annotated:
            region = None
        elif annotations.regions:
            from shapely.ops import unary_union

            region = unary_union(list(annotations.regions))
        else:
            if wanted and tiles:
                notes.append(
                    "no random tiles: no region of interest (class "
                    f"{options.roi_class!r}) and no --fully-annotated"
                )
            wanted = 0
            region = None
    else:
        wanted, kind, region = options.tiles_per_slide, "unlabelled", None
    if wanted:
        found = _random_tiles(wanted, (width, height), side, region, options, rng, tissue,
                              kind)
        if len(found) < wanted:
            where = "the regions of interest" if region is not None else "the slide"
            notes.append(
                f"{len(found)} of {wanted} random tiles: {where} hold(s) no more "
                f"places with {options.min_tissue:.0%} tissue half a tile apart"
            )
        tiles.extend(found)
    return tiles, notes


def _random_tiles(
    wanted: int,
    dimensions: tuple[int, int],
    side: float,
    region: Any | None,
    options: TileOptions,
    rng: np.random.Generator,
    tissue: TissueMap | None,
    kind: str,
) -> list[PlannedTile]:
    """Random tissue tiles inside ``region`` (``None``: the slide), half a tile apart."""
    width, height = dimensions
    if tissue is None:
        d = max(1.0, side / 8.0)
        shape = (max(1, round(height / d)), max(1, round(width / d)))
        tissue = TissueMap(np.ones(shape, dtype=bool), d)
    downsample = float(tissue.downsample)
    allowed = tissue.mask
    if region is not None:
        h, w = allowed.shape
        inside = rasterize([region], (0.0, 0.0, w * downsample, h * downsample), (h, w))
        allowed = allowed & inside
        from shapely.prepared import prep

        region_test = prep(region.buffer(0.5))
    else:
        region_test = None
    rows, cols = np.nonzero(allowed)
    if len(rows) == 0:
        return []
    from shapely.geometry import box as make_box

    out: list[PlannedTile] = []
    centres: list[tuple[float, float]] = []
    for _ in range(50 * wanted + 100):
        if len(out) >= wanted:
            break
        j = int(rng.integers(len(rows)))
        cx = (cols[j] + rng.random()) * downsample
        cy = (rows[j] + rng.random()) * downsample
        x, y = _clip(cx, side, width), _clip(cy, side, height)
        mx, my = x + side / 2.0, y + side / 2.0
        if any((mx - a) ** 2 + (my - b) ** 2 < (side / 2.0) ** 2 for a, b in centres):
            continue
        if region_test is not None and not region_test.contains(
            make_box(x, y, x + side, y + side)
        ):
            continue
        if tissue.box_fraction(x, y, x + side, y + side) < options.min_tissue:
            continue
        centres.append((mx, my))
        out.append(PlannedTile(x, y, side, kind))
    return out
