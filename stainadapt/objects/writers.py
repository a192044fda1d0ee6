"""GeoJSON for QuPath and CSV tables of glomerulus objects.

GeoJSON (RFC 7946 structure, image pixel coordinates, not longitude/latitude): a
``FeatureCollection`` with one ``Feature`` per glomerulus. QuPath imports it by drag
and drop (or *File > Import objects*) as annotations:

* ``id``: a UUID, stable for a given image name and object id (QuPath keeps it);
* ``geometry``: ``Polygon`` (``MultiPolygon`` in the rare case of several pieces),
  corner-convention pixel coordinates (see :mod:`.geometry`);
* ``properties``: ``objectType: "annotation"``, ``name`` ``"Glomerulus <id>"``,
  ``classification`` ``{"name": "Glomerulus", "color": [r, g, b], "colorRGB": int}``
  (``color`` for QuPath >= 0.4, ``colorRGB`` for older ones), ``isLocked: false``,
  ``measurements`` (shown in QuPath's measurement table: id, area, perimeter,
  equivalent diameter, eccentricity, mean probability), and the same values as plain
  properties (``glomerulus_id``, ``mean_probability``, ...) for other readers.

CSV: one row per glomerulus (columns of :meth:`GlomerulusObject.measurements`; unit
suffix ``um``/``um2`` with ``--mpp``, else ``px``/``px2``), and ``summary.csv`` with one
row per image: ``image, count, total_area_<u>2, mean_area_<u>2``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .instances import GlomerulusObject

__all__ = [
    "CLASS_COLOR",
    "feature_collection",
    "read_summary_row",
    "write_csv",
    "write_geojson",
    "write_summary",
]

#: RGB colour of the "Glomerulus" class in QuPath.
CLASS_COLOR = (0, 200, 0)
_NAMESPACE = uuid.UUID("6b1d5a1e-3c6f-4b53-9a3e-2f1c0b9d7a11")


def _ring_list(ring: np.ndarray) -> list[list[float | int]]:
    if np.issubdtype(ring.dtype, np.integer):
        return ring.tolist()
    return [[round(float(x), 3), round(float(y), 3)] for x, y in ring]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def feature_collection(
    objects: Sequence[GlomerulusObject],
    image_name: str,
    mpp: float | None = None,
    class_name: str = "Glomerulus",
) -> dict[str, Any]:
    """The GeoJSON ``FeatureCollection`` (a dict) of one image's objects."""
    r, g, b = CLASS_COLOR
    features = []
    for o in objects:
        rows = o.measurements(mpp)
        polys = [[_ring_list(ring) for ring in poly] for poly in o.polygons]
        if len(polys) == 1:
            geometry = {"type": "Polygon", "coordinates": polys[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polys}
        measurements = {k: _clean(v) for k, v in rows.items() if v is not None}
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{image_name}/{o.id}")),
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": f"{class_name} {o.id}",
                    "classification": {
                        "name": class_name,
                        "color": [r, g, b],
                        "colorRGB": (-1 << 24) | (r << 16) | (g << 8) | b,
                    },
                    "isLocked": False,
                    "measurements": measurements,
                    "glomerulus_id": o.id,
                    **{k: _clean(v) for k, v in rows.items() if k != "id"},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | Path,
    objects: Sequence[GlomerulusObject],
    image_name: str,
    mpp: float | None = None,
    class_name: str = "Glomerulus",
) -> Path:
    """Write ``path`` (atomically) with :func:`feature_collection`."""
    from ..atomic import atomic_write_text

    data = feature_collection(objects, image_name, mpp, class_name)
    return atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def csv_columns(mpp: float | None) -> list[str]:
    """The per-object CSV header for this unit."""
    probe = GlomerulusObject(0, 0, 0.0, 0.0, (0, 0, 0, 0), (0.0, 0.0), None)
    return list(probe.measurements(mpp))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.12g}" if math.isfinite(value) else ""
    return str(value)


def write_csv(
    path: str | Path, objects: Sequence[GlomerulusObject], mpp: float | None = None
) -> Path:
    """One row per object (see the module docstring), written atomically."""
    from ..atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = csv_columns(mpp)
    writer.writerow(cols)
    for o in objects:
        row = o.measurements(mpp)
        writer.writerow([_fmt(row[c]) for c in cols])
    return atomic_write_text(path, buf.getvalue())


def read_summary_row(path: str | Path) -> dict[str, Any]:
    """Count, total and mean area of one per-image CSV (``image`` is its stem)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        area_col = next((c for c in reader.fieldnames or () if c.startswith("area_")), "area_px2")
        areas = [float(r[area_col]) for r in reader if r.get(area_col)]
    unit = area_col.removeprefix("area_")
    total = float(sum(areas))
    return {
        "image": path.stem,
        "count": len(areas),
        f"total_area_{unit}": total,
        f"mean_area_{unit}": total / len(areas) if areas else 0.0,
    }


def write_summary(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``summary.csv``: one row per image (the union of the rows' columns, in order)."""
    from ..atomic import atomic_write_text

    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_fmt(r.get(c)) for c in cols])
    return atomic_write_text(path, buf.getvalue())
