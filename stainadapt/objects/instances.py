"""Glomerulus instances from a binary mask: components, holes, specks, watershed splits.

One pipeline, applied to one connected component at a time (so the in-memory path and
the tiled path for gigapixel slides give the same objects):

1. **Components**: 8-connected foreground regions (``scipy.ndimage.label``).
2. **Specks**: a component with fewer pixels than ``min_area`` (in µm² when ``mpp``
   gives microns per pixel, else pixels) is dropped.
3. **Holes**: with ``fill_holes`` every hole of a component is filled; another
   component lying inside such a hole (a speck in a hole) is dropped, since it becomes
   part of the filled object.
4. **Touching glomeruli**: with ``split`` a component is cut by a watershed on its
   distance transform. Markers are the *h*-maxima of the distance transform
   normalised by its largest value, ``h = split_depth``: two maxima stay one marker
   unless the distance dips between them by at least ``split_depth`` of the peak.
   Measured for two equal discs of radius ``r`` with centres ``D`` apart: with the
   default 0.15 they split from ``D = 1.2 r`` (a waist 80 % of the radius) on; at 0.05
   from ``0.8 r``, at 0.25 from ``1.4 r``. Ellipses up to 6:1 and discs with noisy
   outlines are not cut. Relative depth makes the rule independent of resolution.
5. **Measurements** per instance (:class:`GlomerulusObject`): pixel area, perimeter
   (``skimage.measure.regionprops``), eccentricity, bounding box, centroid, mean
   probability, and its outline polygons (:mod:`.geometry`).

Objects are numbered 1..n in reading order of their bounding boxes (top, then left).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

__all__ = [
    "EIGHT",
    "GlomerulusObject",
    "InstanceOptions",
    "component_instances",
    "label_instances",
    "objects_from_arrays",
]

#: 8-connectivity structuring element.
EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class InstanceOptions:
    """How masks become objects (the ``--instances`` options of ``stainadapt predict``).

    ``min_area`` is in µm² when ``mpp`` (microns per pixel) is given, else in pixels.
    ``simplify`` is the Douglas-Peucker tolerance of the outlines in pixels (0 keeps
    the exact pixel outline). Components whose bounding box has more than
    ``max_object_pixels`` pixels are not processed (a whole tissue section segmented as
    one blob is not a glomerulus, and would need memory in proportion to its box).
    """

    min_area: float = 25.0
    mpp: float | None = None
    fill_holes: bool = True
    split: bool = True
    split_depth: float = 0.15
    simplify: float = 1.0
    class_name: str = "Glomerulus"
    max_object_pixels: int = 2**26

    def __post_init__(self) -> None:
        if self.mpp is not None and not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise InputError(f"--mpp {self.mpp}: must be a positive number (microns per pixel)")
        if not self.min_area >= 0:
            raise InputError(f"--min-area {self.min_area}: must be 0 or more")
        if not 0 < self.split_depth < 1:
            raise InputError(f"--split-depth {self.split_depth}: must be between 0 and 1")
        if not self.simplify >= 0:
            raise InputError(f"--simplify {self.simplify}: must be 0 or more (pixels)")

    @property
    def min_area_px(self) -> float:
        """``min_area`` converted to pixels."""
        return self.min_area / (self.mpp * self.mpp) if self.mpp else self.min_area

    @property
    def unit(self) -> str:
        """Length unit of the measurements: ``um`` with ``mpp``, else ``px``."""
        return "um" if self.mpp else "px"


@dataclass
class GlomerulusObject:
    """One glomerulus: measurements in pixels, outline in image pixel coordinates.

    ``bbox`` is ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive; ``polygons`` a list of
    ``[exterior, *holes]`` rings (``(N, 2)`` arrays of ``(x, y)``).
    """

    id: int
    area_px: int
    perimeter_px: float
    eccentricity: float
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    mean_probability: float | None
    polygons: list[list[np.ndarray]] = field(repr=False, default_factory=list)

    def measurements(self, mpp: float | None = None) -> dict[str, float | int | None]:
        """CSV row: areas in µm² and lengths in µm with ``mpp``, else pixels."""
        s = mpp or 1.0
        u = "um" if mpp else "px"
        area: float | int = self.area_px * s * s if mpp else self.area_px
        x0, y0, x1, y1 = self.bbox
        return {
            "id": self.id,
            f"area_{u}2": area,
            f"perimeter_{u}": self.perimeter_px * s,
            f"equivalent_diameter_{u}": math.sqrt(4.0 * area / math.pi),
            "eccentricity": self.eccentricity,
            "mean_probability": self.mean_probability,
            "centroid_x": self.centroid[0],
            "centroid_y": self.centroid[1],
            "bbox_x0": x0,
            "bbox_y0": y0,
            "bbox_x1": x1,
            "bbox_y1": y1,
        }


def fill_holes(component: np.ndarray) -> np.ndarray:
    """Holes of an 8-connected component filled (background taken as 4-connected)."""
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(component)


def split_touching(component: np.ndarray, depth: float) -> np.ndarray:
    """Watershed split of one component: ``int32`` labels 1..k (0 outside).

    See the module docstring for the marker rule.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    top = float(dist.max())
    if top <= 1.0:
        return component.astype(np.int32)
    # Quantise to 1/200 of the largest distance (so equal depths compare exactly), then
    # the h-maxima: the regional maxima of the reconstruction of (d - h) under d.
    # (skimage's h_maxima marks only the peak tops, so two peaks joined by a shallow
    # saddle would still be two markers; the plateaus of the reconstruction join them.)
    q = np.rint(dist * (200.0 / top))
    h = max(1.0, round(depth * 200.0))
    rec = reconstruction(q - h, q, method="dilation")
    peaks = local_maxima(rec, connectivity=2, allow_borders=True)
    markers, n = ndi.label(peaks & component, structure=EIGHT)
    if n <= 1:
        return component.astype(np.int32)
    return watershed(-dist, markers, mask=component, connectivity=1).astype(np.int32)


def component_instances(component: np.ndarray, options: InstanceOptions) -> np.ndarray:
    """The instance labels (``int32``, 0 background) of one component's (filled) mask.

    The split is decided on the component with its holes filled even when holes are
    kept: the distance transform of a ring has a ridge of many shallow maxima, which
    would cut one glomerulus with a hole into pieces.
    """
    if not options.split:
        return component.astype(np.int32)
    if options.fill_holes:
        return split_touching(component, options.split_depth)
    labels = split_touching(fill_holes(component), options.split_depth)
    return np.where(component, labels, 0).astype(np.int32)


def _measure(
    sub: np.ndarray,
    y0: int,
    x0: int,
    prob: np.ndarray | None,
    options: InstanceOptions,
) -> GlomerulusObject:
    from skimage.measure import regionprops

    from .geometry import polygons_from_mask

    ys, xs = np.nonzero(sub)
    area = int(ys.size)
    props = regionprops(sub.astype(np.uint8))[0]
    mean_p = float(prob[sub].mean()) if prob is not None else None
    return GlomerulusObject(
        id=0,
        area_px=area,
        perimeter_px=float(props.perimeter),
        eccentricity=float(props.eccentricity),
        bbox=(
            x0 + int(xs.min()),
            y0 + int(ys.min()),
            x0 + int(xs.max()) + 1,
            y0 + int(ys.max()) + 1,
        ),
        centroid=(x0 + float(xs.mean()) + 0.5, y0 + float(ys.mean()) + 0.5),
        mean_probability=mean_p,
        polygons=polygons_from_mask(sub, (x0, y0), options.simplify),
    )


@dataclass
class Component:
    """A connected component found by the first pass: bounding box, pixels, a seed."""

    y0: int
    x0: int
    y1: int
    x1: int
    pixels: int
    seed: tuple[int, int]  # (y, x) of one of its pixels

    @property
    def box_pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


#: ``crop(y0, y1, x0, x1) -> (mask crop bool, probability crop float or None)``.
CropReader = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray | None]]


def objects_from_components(
    components: list[Component],
    crop: CropReader,
    options: InstanceOptions,
    notes: list[str] | None = None,
) -> list[GlomerulusObject]:
    """The shared second pass: each component's crop -> filled, split, measured objects.

    Components are visited largest box first, so a component in the hole of another
    is known to be swallowed (when filling holes) before its turn comes.
    """
    from scipy import ndimage as ndi

    keep = [c for c in components if c.pixels >= options.min_area_px and c.pixels > 0]
    big = [c for c in keep if c.box_pixels > options.max_object_pixels]
    if big and notes is not None:
        for c in big:
            notes.append(
                f"skipped a component of {c.y1 - c.y0}x{c.x1 - c.x0} px at x={c.x0}, y={c.y0} "
                f"(bounding box above {options.max_object_pixels} px: not one glomerulus)"
            )
    keep = [c for c in keep if c.box_pixels <= options.max_object_pixels]
    keep.sort(key=lambda c: (-c.box_pixels, c.y0, c.x0))
    boxes = np.array([[c.y0, c.x0, c.y1, c.x1] for c in keep], dtype=np.int64).reshape(-1, 4)
    seeds = np.array([c.seed for c in keep], dtype=np.int64).reshape(-1, 2)
    swallowed = np.zeros(len(keep), dtype=bool)
    objects: list[GlomerulusObject] = []
    for i, c in enumerate(keep):
        if swallowed[i]:
            continue
        mask, prob = crop(c.y0, c.y1, c.x0, c.x1)
        labels, _ = ndi.label(mask, structure=EIGHT)
        comp = labels == labels[c.seed[0] - c.y0, c.seed[1] - c.x0]
        if options.fill_holes:
            filled = fill_holes(comp)
            if filled.sum() > comp.sum():
                inside = (
                    (boxes[:, 0] >= c.y0) & (boxes[:, 2] <= c.y1)
                    & (boxes[:, 1] >= c.x0) & (boxes[:, 3] <= c.x1)
                )  # fmt: skip
                inside[i] = False
                for j in np.nonzero(inside & ~swallowed)[0]:
                    sy, sx = seeds[j]
                    if filled[sy - c.y0, sx - c.x0]:
                        swallowed[j] = True
            comp = filled
        inst = component_instances(comp, options)
        for k in range(1, int(inst.max()) + 1):
            sub = inst == k
            if sub.any():
                objects.append(_measure(sub, c.y0, c.x0, prob, options))
    objects.sort(key=lambda o: (o.bbox[1], o.bbox[0], o.bbox[3], o.bbox[2]))
    for n, o in enumerate(objects, start=1):
        o.id = n
    return objects


def components_of(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """8-connected components of an in-memory mask: ``(labels, [Component])``."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask, structure=EIGHT)
    if n == 0:
        return labels, []
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    comps = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        # Seed: the first pixel in raster order (its box's top row holds one).
        top = labels[sl[0].start, sl[1]]
        x = sl[1].start + int(np.argmax(top == i))
        comps.append(
            Component(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop,
                      int(counts[i]), (sl[0].start, x))
        )  # fmt: skip
    return labels, comps


def objects_from_arrays(
    mask: np.ndarray,
    probabilities: np.ndarray | None = None,
    options: InstanceOptions | None = None,
    notes: list[str] | None = None,
) -> list[GlomerulusObject]:
    """Glomerulus objects of an in-memory ``(H, W)`` mask (and its probabilities)."""
    options = options or InstanceOptions()
    mask = np.asarray(mask).astype(bool, copy=False)
    if probabilities is not None and probabilities.shape != mask.shape:
        raise InputError(
            f"probabilities {probabilities.shape} and mask {mask.shape} differ in shape"
        )
    _, comps = components_of(mask)

    def crop(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        p = probabilities[y0:y1, x0:x1] if probabilities is not None else None
        return mask[y0:y1, x0:x1], p

    return objects_from_components(comps, crop, options, notes)


def label_instances(mask: np.ndarray, options: InstanceOptions | None = None) -> np.ndarray:
    """``int32`` instance label image of a binary mask (0 background, ids 1..n).

    The same objects as :func:`objects_from_arrays` (same numbering), as an image: for
    object-level evaluation, where the exact pixels matter more than outlines.
    """
    from scipy import ndimage as ndi

    options = options or InstanceOptions(simplify=0.0)
    mask = np.asarray(mask).astype(bool, copy=False)
    out = np.zeros(mask.shape, dtype=np.int32)
    _, comps = components_of(mask)
    keep = [c for c in comps if c.pixels >= options.min_area_px]
    keep = [c for c in keep if c.box_pixels <= options.max_object_pixels]
    keep.sort(key=lambda c: (-c.box_pixels, c.y0, c.x0))
    pieces: list[tuple[tuple[int, ...], int, int, np.ndarray]] = []
    for c in keep:
        if out[c.seed] == -1:  # inside a filled hole of a bigger component
            continue
        labels, _ = ndi.label(mask[c.y0 : c.y1, c.x0 : c.x1], structure=EIGHT)
        comp = labels == labels[c.seed[0] - c.y0, c.seed[1] - c.x0]
        if options.fill_holes:
            comp = fill_holes(comp)
        view = out[c.y0 : c.y1, c.x0 : c.x1]
        view[comp] = -1  # claimed
        inst = component_instances(comp, options)
        for k in range(1, int(inst.max()) + 1):
            sub = inst == k
            if sub.any():
                ys, xs = np.nonzero(sub)
                y0, x0 = c.y0 + int(ys.min()), c.x0 + int(xs.min())
                key = (y0, x0, c.y0 + int(ys.max()) + 1, c.x0 + int(xs.max()) + 1)
                pieces.append((key, c.y0, c.x0, sub))
    out[out == -1] = 0
    pieces.sort(key=lambda p: p[0])
    for n, (_, y0, x0, sub) in enumerate(pieces, start=1):
        h, w = sub.shape
        out[y0 : y0 + h, x0 : x0 + w][sub] = n
    return out
