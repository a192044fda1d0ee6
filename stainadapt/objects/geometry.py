"""Exact pixel-edge outlines of a mask, as GeoJSON-ready polygon rings.

Why a tracer of its own instead of ``skimage.measure.find_contours``: marching squares
puts vertices on the lines between pixel *centres*, so its polygons cut every corner
and their area is not the pixel count. QuPath (and most slide viewers) use the pixel
*corner* convention: pixel ``(row r, column c)`` is the square ``[c, c+1] x [r, r+1]``
in image coordinates ``(x, y)``. Tracing along pixel edges gives polygons in exactly
that convention, whose area equals the number of pixels (before simplification).

Rules:

* Objects are 8-connected (``skimage.measure.label``'s default): at a vertex where two
  object pixels touch only diagonally the ring passes through the vertex and goes on
  around the other pixel, so the object stays one polygon.
* Every ring is closed (first vertex repeated last), has at least 4 positions and no
  collinear vertices.
* Orientation follows RFC 7946 as a validator computes it from the numbers written
  (shoelace sum over ``(x, y)``): exterior rings positive ("counter-clockwise"), holes
  negative. With image y pointing down, that is clockwise on screen; QuPath does not
  care about orientation, GeoJSON validators do.
* Simplification is Douglas-Peucker (``skimage.measure.approximate_polygon``) with a
  tolerance in pixels; a ring that would degenerate (fewer than 4 positions, or its
  orientation flipping) is kept unsimplified.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_rings", "polygons_from_mask", "ring_area", "simplify_ring"]

# Directions in image coordinates (x right, y down): index -> (dx, dy).
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed ring ``(N, 2)`` of ``(x, y)``: positive = exterior."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def mask_rings(mask: np.ndarray) -> list[np.ndarray]:
    """All boundary rings of a boolean mask along pixel edges: ``(N, 2) int64`` ``(x, y)``.

    Exterior rings come out with positive :func:`ring_area`, holes negative; each is
    closed and keeps only its corner vertices. ``|area|`` sums to the pixel count
    (exteriors minus holes).
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    fg = m[1:-1, 1:-1]
    rows, cols = np.nonzero(fg & ~m[:-2, 1:-1])  # top side open
    starts = [(cols, rows, 0)]  # (x, y) start vertex, direction index
    r, c = np.nonzero(fg & ~m[1:-1, 2:])  # right side open: down along x = c + 1
    starts.append((c + 1, r, 1))
    r, c = np.nonzero(fg & ~m[2:, 1:-1])  # bottom side open: left along y = r + 1
    starts.append((c + 1, r + 1, 2))
    r, c = np.nonzero(fg & ~m[1:-1, :-2])  # left side open: up along x = c
    starts.append((c, r + 1, 3))
    # Walking each edge in its direction keeps the object on the right (screen view).
    out: dict[tuple[int, int], list[int]] = {}
    for xs, ys, d in starts:
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            out.setdefault((x, y), []).append(d)
    rings: list[np.ndarray] = []
    while out:
        # Start on a vertex with one way out (every ring has corners that are not
        # diagonal touches), so the turn rule pairs edges the same way all round.
        start = next((v for v, o in out.items() if len(o) == 1), next(iter(out)))
        x, y = start
        d = out[start][0]
        verts: list[tuple[int, int]] = []
        prev_d = -1
        while True:
            options = out.get((x, y))
            if options is None:
                break
            if len(options) == 1:
                d = options[0]
            else:  # diagonal touch: turn left (screen) so 8-neighbours stay one ring
                left = (prev_d + 3) % 4 if prev_d >= 0 else options[0]
                d = left if left in options else options[0]
            options.remove(d)
            if not options:
                del out[(x, y)]
            if d != prev_d:
                verts.append((x, y))
            prev_d = d
            dx, dy = _DIRS[d]
            x, y = x + dx, y + dy
            if (x, y) == start and start not in out:
                break
        # The start may sit in the middle of a straight run: drop it then.
        if len(verts) > 2 and _collinear(verts[-1], verts[0], verts[1]):
            verts = verts[1:]
        verts.append(verts[0])
        ring = np.asarray(verts, dtype=np.int64)
        # The object on the right of the walk in y-down coordinates is a positive
        # shoelace sum for exteriors (and negative for holes), as RFC 7946 wants.
        rings.append(ring)
    return rings


def _collinear(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> bool:
    return (b[0] - a[0]) * (c[1] - b[1]) == (b[1] - a[1]) * (c[0] - b[0])


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed ring, never degenerating it."""
    if tolerance <= 0 or len(ring) <= 5:
        return ring
    from skimage.measure import approximate_polygon

    simple = approximate_polygon(ring.astype(np.float64), tolerance)
    if len(simple) < 4 or not np.array_equal(simple[0], simple[-1]):
        return ring
    area, new_area = ring_area(ring), ring_area(simple)
    if new_area == 0 or (area > 0) != (new_area > 0):
        return ring
    return simple.astype(ring.dtype) if np.all(simple == np.rint(simple)) else simple


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    """Even-odd rule: is ``point`` (x, y) strictly inside the closed ring?"""
    x, y = float(point[0]), float(point[1])
    xs, ys = ring[:-1, 0].astype(np.float64), ring[:-1, 1].astype(np.float64)
    xe, ye = ring[1:, 0].astype(np.float64), ring[1:, 1].astype(np.float64)
    crosses = (ys > y) != (ye > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xcross = xs + (y - ys) * (xe - xs) / (ye - ys)
    return bool(np.count_nonzero(crosses & (x < xcross)) % 2)


def polygons_from_mask(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.0
) -> list[list[np.ndarray]]:
    """Polygons (``[exterior, *holes]`` lists of rings) of one object's mask.

    ``offset`` is ``(x0, y0)`` of the mask in the image, so rings come out in image pixel
    coordinates. One 8-connected object gives one polygon; a mask of several pieces
    gives several (a GeoJSON MultiPolygon). Holes are put in the exterior around them.
    """
    rings = mask_rings(mask)
    shift = np.asarray(offset, dtype=np.int64)
    exteriors = [r + shift for r in rings if ring_area(r) > 0]
    holes = [r + shift for r in rings if ring_area(r) < 0]
    exteriors.sort(key=ring_area, reverse=True)
    polys: list[list[np.ndarray]] = [[e] for e in exteriors]
    for hole in holes:
        # A hole's vertex is a corner of the object; test a point just inside the hole.
        probe = _hole_probe(hole)
        owner = next((p for p in polys if _inside(probe, p[0])), polys[0] if polys else None)
        if owner is not None:
            owner.append(hole)
    return [[simplify_ring(r, tolerance) for r in p] for p in polys]


def _hole_probe(hole: np.ndarray) -> np.ndarray:
    """A point strictly inside the hole's region (the centre of a hole pixel)."""
    a, b = hole[0].astype(np.float64), hole[1].astype(np.float64)
    d = np.sign(b - a)
    # Holes have negative area: the hole region lies left of the walk in (x, y) math
    # orientation terms; the centre of the first hole pixel is half a step along the
    # edge and half a step to the side where the shoelace says the hole is.
    mid = a + 0.5 * d
    side = np.array([-d[1], d[0]])  # left of the direction in (x, y) with y up
    for s in (side, -side):
        p = mid + 0.5 * s
        if _inside(p, hole):
            return p
    return mid + 0.5 * side
