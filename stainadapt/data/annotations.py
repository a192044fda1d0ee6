"""Polygon annotations from QuPath's GeoJSON export, and their masks.

QuPath (*File > Export objects as GeoJSON*) writes either a ``FeatureCollection`` or a
bare list of ``Feature`` objects. Each feature's geometry is in **level-0 pixel
coordinates** of its slide (x right, y down, the pixel-corner convention of
:mod:`stainadapt.objects.geometry`, the same one ``predict --instances`` writes), and its
``properties`` carry:

* ``classification``: ``{"name": "Glomerulus", ...}`` (older exports: a bare string);
  features without one are *unclassified*;
* ``objectType``: ``"annotation"``, ``"detection"``, ``"cell"``, ...; QuPath 0.2 wrote
  the Java class as the feature's ``id`` instead (``PathAnnotationObject``), which is
  read the same way. Annotations and detections are used alike; cells, tiles and TMA
  cores (a project's cell detection, say) are skipped.

``Polygon`` and ``MultiPolygon`` geometries (with holes), and the polygons inside a
``GeometryCollection``, are read; points and lines are skipped (they outline nothing).
A self-intersecting ring (a freehand outline that crosses itself) is repaired with
:func:`shapely.make_valid` and its polygonal parts kept.

Which polygons are glomeruli and which are regions of interest is decided by class
(:func:`split_annotations`): a region of interest is a polygon whose class matches
``roi_class`` (default ``Region*``, QuPath's built-in class for regions, which the
pattern also matches literally); glomeruli are every other polygon, or only those whose
class matches ``glomerulus_class``. Patterns are shell-style (``fnmatch``) and ignore case.

Masks (:func:`rasterize`): a pixel is foreground when its *centre* lies inside a
polygon and outside that polygon's holes. Overlapping annotations are simply foreground
where either is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "DEFAULT_ROI_CLASS",
    "OBJECT_TYPES",
    "Annotation",
    "AnnotationSet",
    "annotation_centre",
    "check_within",
    "parse_annotations",
    "rasterize",
    "read_annotations",
    "split_annotations",
]

#: Class pattern of regions of interest (QuPath's built-in region class is ``Region*``).
DEFAULT_ROI_CLASS = "Region*"

#: QuPath object types that may be glomeruli or regions (cells, tiles, TMA cores are not).
OBJECT_TYPES = ("annotation", "detection")

#: QuPath 0.2 names the object type by the feature's ``id`` (its Java class).
_LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
}


@dataclass(frozen=True)
class Annotation:
    """One polygonal object of a GeoJSON file.

    ``geometry`` is a shapely ``Polygon`` or ``MultiPolygon`` in level-0 pixels;
    ``classification`` is the class name (``None``: unclassified); ``object_type`` is
    QuPath's ``objectType`` (``"annotation"`` when the file does not say); ``index`` is
    the feature's position in the file, for messages.
    """

    geometry: Any
    classification: str | None
    object_type: str
    index: int
    name: str | None = None


@dataclass(frozen=True)
class AnnotationSet:
    """A file's glomeruli and regions of interest (:func:`split_annotations`)."""

    path: Path
    glomeruli: tuple[Any, ...]
    regions: tuple[Any, ...]

    def shifted(self, dx: float, dy: float) -> AnnotationSet:
        """The same polygons moved by ``(dx, dy)`` level-0 pixels."""
        if dx == 0 and dy == 0:
            return self
        from shapely.affinity import translate

        def move(geoms: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(translate(g, xoff=dx, yoff=dy) for g in geoms)

        return AnnotationSet(self.path, move(self.glomeruli), move(self.regions))

    def bounds(self) -> tuple[float, float, float, float] | None:
        """``(xmin, ymin, xmax, ymax)`` over every polygon, level-0 pixels (None: empty)."""
        geoms = [*self.glomeruli, *self.regions]
        if not geoms:
            return None
        b = np.array([g.bounds for g in geoms], dtype=np.float64)
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(
            b[:, 3].max()
        )


def _class_name(props: dict[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        if name is None and isinstance(cls.get("names"), list):  # derived classes
            name = ": ".join(str(n) for n in cls["names"])
        return None if name is None else str(name)
    if isinstance(cls, str):
        return cls
    return None


def _object_type(feature: dict[str, Any], props: dict[str, Any]) -> str:
    kind = props.get("objectType")
    if isinstance(kind, str):
        return kind.lower()
    legacy = feature.get("id")
    if isinstance(legacy, str) and legacy in _LEGACY_TYPES:
        return _LEGACY_TYPES[legacy]
    return "annotation"


def _polygonal(geom: Any) -> Any | None:
    """The polygonal part of a shapely geometry, repaired; ``None`` when there is none."""
    from shapely import make_valid
    from shapely.geometry import MultiPolygon, Polygon

    if not geom.is_valid:
        geom = make_valid(geom)
    if isinstance(geom, Polygon | MultiPolygon):
        parts = [geom] if isinstance(geom, Polygon) else list(geom.geoms)
    elif hasattr(geom, "geoms"):
        parts = []
        for g in geom.geoms:
            sub = _polygonal(g)
            if sub is not None:
                parts.extend([sub] if isinstance(sub, Polygon) else list(sub.geoms))
    else:
        return None
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _features(data: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features")
        if not isinstance(items, list):
            raise InputError(f"{source}: not GeoJSON (a FeatureCollection without features)")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    else:
        found = data.get("type", "an object without 'type'") if isinstance(data, dict) \
            else type(data).__name__
        raise InputError(
            f"{source}: not GeoJSON (expected a FeatureCollection or a list of features, "
            f"found {found})"
        )
    for k, f in enumerate(items):
        if not (isinstance(f, dict) and f.get("type") == "Feature"):
            raise InputError(f"{source}: not GeoJSON (item {k} is not a Feature)")
    return items


def parse_annotations(data: Any, source: str = "<geojson>") -> list[Annotation]:
    """Annotations of already-decoded GeoJSON ``data`` (see the module docstring).

    ``source`` names the file in messages. Raises :class:`InputError` for data that is
    not GeoJSON, bad coordinates, or no polygon at all.
    """
    from shapely.geometry import shape

    out: list[Annotation] = []
    kinds: dict[str, int] = {}
    for k, feature in enumerate(_features(data, source)):
        geo = feature.get("geometry")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        if not isinstance(geo, dict):
            kinds["no geometry"] = kinds.get("no geometry", 0) + 1
            continue
        gtype = str(geo.get("type"))
        kinds[gtype] = kinds.get(gtype, 0) + 1
        if gtype not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            continue
        try:
            geom = _polygonal(shape(geo))
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise InputError(
                f"{source}: feature {k}: bad {gtype} coordinates ({exc})"
            ) from None
        if geom is None:
            continue
        name = props.get("name")
        out.append(
            Annotation(
                geometry=geom,
                classification=_class_name(props),
                object_type=_object_type(feature, props),
                index=k,
                name=None if name is None else str(name),
            )
        )
    if not out:
        found = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items())) or "no features"
        raise InputError(f"{source}: no polygons ({found})")
    return out


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read a GeoJSON file (QuPath export) into :class:`Annotation` objects.

    Raises :class:`InputError` naming ``path`` when it cannot be read, is not JSON or
    not GeoJSON, or holds no polygon.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not GeoJSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not GeoJSON (invalid JSON at line {exc.lineno}: {exc.msg})"
        ) from None
    return parse_annotations(data, str(path))


def _matches(name: str | None, pattern: str | None) -> bool:
    return name is not None and pattern is not None and fnmatchcase(
        name.lower(), pattern.lower()
    )


def split_annotations(
    annotations: Sequence[Annotation],
    path: str | Path = "<geojson>",
    glomerulus_class: str | None = None,
    roi_class: str | None = DEFAULT_ROI_CLASS,
) -> AnnotationSet:
    """Sort annotations into glomeruli and regions of interest by class pattern.

    Only annotations and detections count (:data:`OBJECT_TYPES`): the cells, tiles and
    TMA cores of a QuPath project are never glomeruli. Regions: class matches
    ``roi_class`` (``None``: no regions). Glomeruli: every other polygon, or with
    ``glomerulus_class`` only those whose class matches it. A pattern that matches
    nothing is an :class:`InputError` listing the classes found, since it is most
    likely a typo.
    """
    annotations = [a for a in annotations if a.object_type in OBJECT_TYPES]
    regions = tuple(a.geometry for a in annotations if _matches(a.classification, roi_class))
    rest = [a for a in annotations if not _matches(a.classification, roi_class)]
    if glomerulus_class is None:
        glomeruli = tuple(a.geometry for a in rest)
    else:
        glomeruli = tuple(
            a.geometry for a in rest if _matches(a.classification, glomerulus_class)
        )
        if not glomeruli:
            classes = sorted({a.classification or "(unclassified)" for a in annotations})
            raise InputError(
                f"{path}: no polygon of class {glomerulus_class!r} "
                f"(classes found: {', '.join(classes)})"
            )
    return AnnotationSet(Path(path), glomeruli, regions)


def check_within(
    annotations: AnnotationSet, width: int, height: int, slide: str | Path = "the slide"
) -> None:
    """Refuse polygons that reach beyond a ``width`` x ``height`` level-0 slide.

    A margin of 1 % of the slide's side (at least 2 pixels) is tolerated, for outlines
    drawn to the very edge. Anything further out means the file belongs to another
    slide or was exported at another scale: :class:`InputError` naming the file, the
    first such polygon's bounds and the slide's size.
    """
    mx, my = max(2.0, 0.01 * width), max(2.0, 0.01 * height)
    for geom in (*annotations.glomeruli, *annotations.regions):
        x0, y0, x1, y1 = geom.bounds
        if x0 < -mx or y0 < -my or x1 > width + mx or y1 > height + my:
            raise InputError(
                f"{annotations.path}: polygon at x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} "
                f"lies outside {slide} ({width}x{height} pixels at level 0); is it the "
                "annotation file of another slide?"
            )


def _polygons(geoms: Iterable[Any]) -> Iterable[Any]:
    for g in geoms:
        if g.geom_type == "Polygon":
            yield g
        else:
            yield from g.geoms


def rasterize(
    geoms: Iterable[Any],
    box: tuple[float, float, float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """The ``(H, W) bool`` mask of polygons over a level-0 box, resampled to ``shape``.

    ``box`` is ``(x, y, w, h)`` in level-0 pixels, ``shape`` ``(H, W)`` the mask's size,
    so one mask pixel spans ``w / W`` by ``h / H`` level-0 pixels. Mask pixel ``(r, c)``
    is foreground when its centre, level-0 ``(x + (c + 0.5) w / W, y + (r + 0.5) h / H)``,
    lies inside a polygon and outside its holes (an island inside a hole is another
    polygon and is drawn as foreground). A centre exactly on an outline counts as inside
    on the polygon's left and top edges and outside on its right and bottom ones, so an
    axis-aligned rectangle on pixel corners gives exactly its area in pixels.
    """
    x, y, w, h = (float(v) for v in box)
    rows, cols = int(shape[0]), int(shape[1])
    sx, sy = cols / w, rows / h
    mask = np.zeros((rows, cols), dtype=bool)
    for poly in _polygons(geoms):
        bx0, by0, bx1, by1 = poly.bounds
        if bx1 <= x or by1 <= y or bx0 >= x + w or by0 >= y + h:
            continue
        # Pixel window the polygon can touch, so the fill works on a small array.
        c0, r0 = max(int(np.floor((bx0 - x) * sx)), 0), max(int(np.floor((by0 - y) * sy)), 0)
        c1 = min(int(np.ceil((bx1 - x) * sx)) + 1, cols)
        r1 = min(int(np.ceil((by1 - y) * sy)) + 1, rows)
        if c1 <= c0 or r1 <= r0:
            continue
        rings = []
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)
            rings.append(np.stack([(xy[:, 0] - x) * sx - c0, (xy[:, 1] - y) * sy - r0], 1))
        mask[r0:r1, c0:c1] |= _even_odd_fill(rings, (r1 - r0, c1 - c0))
    return mask


def _even_odd_fill(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W) bool``: pixels whose centre ``(c + 0.5, r + 0.5)`` is inside the rings.

    ``rings`` are closed ``(N, 2)`` ``(x, y)`` rings in pixel units (exterior and holes
    of one polygon; the even-odd rule makes holes background). A scanline fill: each
    edge crossing a row's centre line toggles inside/outside from the first pixel
    whose centre is at or right of the crossing; edges are half-open in y. Vertices
    may lie outside the window: crossings left of it still count.
    """
    rows, cols = shape
    a = np.concatenate([r[:-1] for r in rings])
    b = np.concatenate([r[1:] for r in rings])
    yc = np.arange(rows, dtype=np.float64) + 0.5
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    row, edge = np.nonzero((lo[None, :] <= yc[:, None]) & (yc[:, None] < hi[None, :]))
    t = (yc[row] - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
    xc = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
    col = np.clip(np.ceil(xc - 0.5), 0, cols).astype(np.int64)
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(toggles, (row, col), 1)
    return (np.cumsum(toggles[:, :cols], axis=1) & 1).astype(bool)


def annotation_centre(geom: Any, scale: float) -> tuple[float, float]:
    """Where to centre a tile on one annotated glomerulus: level-0 ``(x, y)``.

    The polygon (its largest part, for a MultiPolygon) is rasterised at ``scale`` mask
    pixels per level-0 pixel, the tile scale, and its centre is found with
    :func:`stainadapt.data.sampling.glomerulus_centres`, the rule training's
    foreground-aware crops use: the centroid, or for a region whose centroid lies
    outside it (a crescent) its pixel nearest the centroid. A polygon smaller than a
    pixel at that scale gives a point inside it (``representative_point``).
    """
    from .sampling import glomerulus_centres

    part = max(_polygons([geom]), key=lambda p: p.area)
    x0, y0, x1, y1 = part.bounds
    pad = 1.0 / scale
    box = (x0 - pad, y0 - pad, (x1 - x0) + 2 * pad, (y1 - y0) + 2 * pad)
    shape = (max(1, round(box[3] * scale)), max(1, round(box[2] * scale)))
    mask = rasterize([part], box, shape)
    centres = glomerulus_centres(mask)
    if len(centres) == 0:
        p = part.representative_point()
        return float(p.x), float(p.y)
    sx, sy = shape[1] / box[2], shape[0] / box[3]
    pts = np.stack(
        [box[0] + (centres[:, 1] + 0.5) / sx, box[1] + (centres[:, 0] + 0.5) / sy], axis=1
    )
    c = part.centroid
    j = int(np.argmin((pts[:, 0] - c.x) ** 2 + (pts[:, 1] - c.y) ** 2))
    return float(pts[j, 0]), float(pts[j, 1])
