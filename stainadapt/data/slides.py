"""Whole slides of every format through one reader: levels, regions, resolution (mpp).

(Past 500 lines: the three backends and the resolution rules they share are one
interface, and splitting them would put :class:`Slide`'s contract in several places.)

:func:`open_slide` returns a :class:`Slide` whatever the file is:

* **OpenSlide** (``openslide-python``; ``openslide-bin`` ships the library) reads the
  scanner formats: Aperio ``.svs``, Hamamatsu ``.ndpi``/``.vms``/``.vmu``, 3DHistech
  ``.mrxs`` (a file plus a folder of the same name), Leica ``.scn``, Ventana ``.bif``,
  and vendor TIFFs (Aperio, Philips, Ventana written as ``.tif``).
* **tifffile** (:class:`stainadapt.data.tiff.TiffReader`) reads every other TIFF: plain,
  striped, tiled, pyramidal (levels as successive pages or SubIFDs) and OME-TIFF. A
  generic tiled TIFF goes here rather than to OpenSlide because OpenSlide does not list
  levels stored as SubIFDs; the pixels are the same.
* **PNG/JPEG** are read whole (:func:`stainadapt.data.io.read_image`): one level.

Coordinates follow OpenSlide: ``x, y`` are level-0 pixels, ``w, h`` pixels of the level
read. Every read returns ``(h, w, 3) uint8`` RGB; what lies outside the slide (or where
a scanner stored no tile, OpenSlide's transparent pixels) is white, i.e. glass.
Associated images (label, macro, thumbnail) are never levels: OpenSlide keeps them apart
and tifffile puts them in their own series, of which only the first (the slide) is read.

Resolution: ``mpp`` (microns per level-0 pixel) comes from OpenSlide's
``openslide.mpp-x``/``-y``, from the TIFF ``XResolution``/``YResolution`` tags
(centimetre or inch units; a value outside 0.01..100 um/px, e.g. a 72 dpi default, is
ignored), from OME ``PhysicalSizeX``/``Y``, or from an Aperio description (``MPP =``).
When only the objective power is known it is derived as ``10 / power`` (the common
scanner relation: 40x -> 0.25, 20x -> 0.5 um/px; :data:`MICRONS_AT_1X`); ``mpp_source``
says which. ``fallback_mpp`` (``predict --mpp``) is used when the file has none.

Resampling (:meth:`Slide.view`, :meth:`Slide.read_at`): a box is read from the coarsest
level at least as fine as the target and resized with Pillow (bilinear, antialiased
when shrinking), mapping pixel centres exactly so bands read one after another join
without a seam.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .io import IMAGE_EXTS, TIFF_EXTS, read_image, to_rgb8

__all__ = [
    "MICRONS_AT_1X",
    "SLIDE_EXTS",
    "READABLE_EXTS",
    "Slide",
    "SlideView",
    "mpp_from_power",
    "open_slide",
]

#: Extensions read by OpenSlide only (TIFFs are in ``IMAGE_EXTS``).
SLIDE_EXTS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")
#: Every extension :func:`open_slide` reads.
READABLE_EXTS = IMAGE_EXTS + SLIDE_EXTS
#: Microns per pixel times objective power: ``mpp = MICRONS_AT_1X / power``.
MICRONS_AT_1X = 10.0
#: Plausible microns per pixel; resolution tags outside are taken as unset.
_MPP_RANGE = (0.01, 100.0)
_BAND_BYTES = 2**22


def mpp_from_power(power: float) -> float:
    """Microns per pixel of a scan at objective ``power`` (40 -> 0.25, 20 -> 0.5)."""
    return MICRONS_AT_1X / float(power)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    return float(mpp) if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None


class Slide:
    """One slide: its pyramid, resolution and pixels (see the module docstring).

    Attributes:
        path: the file.
        backend: ``"openslide"``, ``"tifffile"`` or ``"image"``.
        vendor: the format OpenSlide detected (``"aperio"``, ``"generic-tiff"``...) or
            ``"tiff"``/``"image"``.
        dimensions: level-0 ``(width, height)``.
        level_dimensions: ``(width, height)`` of every level, finest first.
        level_downsamples: level-0 pixels per level pixel, ``1.0`` first.
        mpp: microns per level-0 pixel, or ``None`` when unknown.
        mpp_source: ``"file"``, ``"objective power"``, ``"given"`` (``fallback_mpp``)
            or ``None``.
        objective_power: the scan's objective magnification, or ``None``.
    """

    backend = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vendor = "?"
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.mpp: float | None = None
        self.mpp_source: str | None = None
        self.objective_power: float | None = None

    # -- what a backend provides ----------------------------------------------------

    def _read_level(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3) uint8`` of level ``level`` from its pixel ``(lx, ly)``; white outside."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    # -- shared ---------------------------------------------------------------------

    def _finish(self, fallback_mpp: float | None) -> None:
        if self.mpp is not None:
            self.mpp_source = self.mpp_source or "file"
        elif self.objective_power:
            self.mpp, self.mpp_source = mpp_from_power(self.objective_power), "objective power"
        elif fallback_mpp is not None:
            if not fallback_mpp > 0:
                raise InputError(f"--mpp {fallback_mpp}: must be above 0")
            self.mpp, self.mpp_source = float(fallback_mpp), "given"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Level-0 ``(x, y, width, height)`` of the scanned area.

        OpenSlide's ``openslide.bounds-x``/``-y``/``-width``/``-height`` where the format
        records them (MRXS and a few others; QuPath shows such a slide cropped to this
        box); else, and for every other reader, the full slide ``(0, 0, W, H)``.
        """
        w, h = self.dimensions
        return (0, 0, w, h)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(H, W)`` (the predictor's reader interface)."""
        w, h = self.dimensions
        return (h, w)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"Slide({str(self.path)!r}, {self.backend}/{self.vendor}, {w}x{h}, "
                f"levels={self.level_count}, mpp={self.mpp})")

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """``(h, w, 3) uint8`` RGB of ``level`` whose top-left is level-0 pixel ``(x, y)``.

        ``w, h`` are pixels of ``level`` (OpenSlide's convention); outside the slide is
        white.
        """
        if not 0 <= level < self.level_count:
            raise InputError(f"{self.path}: no level {level} (the slide has {self.level_count})")
        ds = self.level_downsamples[level]
        return self._read_level(level, int(math.floor(x / ds)), int(math.floor(y / ds)),
                                int(w), int(h))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Full-width level-0 rows ``y0:y1`` (clipped) as ``(r, W, 3) uint8``."""
        y0, y1 = max(0, y0), min(self.shape[0], y1)
        return self.read_region(0, y0, self.shape[1], max(0, y1 - y0))

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (+0.1% slack)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001 and d >= self.level_downsamples[best]:
                best = i
        return best

    def view(self, downsample: float) -> SlideView:
        """The slide as an image ``downsample`` times coarser than level 0 (resampled)."""
        return SlideView(self, downsample)

    def downsample_for(self, mpp: float) -> float:
        """Level-0 pixels per pixel at ``mpp``; needs the slide's own :attr:`mpp`."""
        if self.mpp is None:
            raise InputError(
                f"{self.path}: the slide has no resolution (mpp); give it with --mpp"
            )
        if not mpp > 0:
            raise InputError(f"mpp {mpp}: must be above 0")
        return float(mpp) / self.mpp

    def read_at(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        """The level-0 box ``(x, y, w, h)`` resampled to ``mpp``.

        Returns ``(round(h / d), round(w / d), 3) uint8`` with ``d = mpp / slide mpp``,
        read from :meth:`best_level` of ``d`` and resized.
        """
        d = self.downsample_for(mpp)
        view = self.view(d)
        return view.read_box(x / d, y / d, max(1, round(w / d)), max(1, round(h / d)))

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """``(image (h, w, 3) uint8, downsample)``: the slide with its longer side at most
        ``max_side``, read band by band from the coarsest level that serves it."""
        w0, h0 = self.dimensions
        d = max(1.0, max(w0, h0) / float(max_side))
        view = self.view(d)
        h, w = view.shape
        out = np.empty((h, w, 3), dtype=np.uint8)
        # Bands of about _BAND_BYTES of the level read, whatever its width.
        lw = self.level_dimensions[view.level][0]
        rows = int(max(8, min(h, _BAND_BYTES // max(1.0, 4 * lw * view.downsample
                                                    / view.level_downsample))))
        for y in range(0, h, rows):
            out[y : y + rows] = view.read_rows(y, y + rows)
        return out, d


class SlideView:
    """A slide resampled ``downsample`` times coarser than level 0 (also finer: < 1).

    ``shape`` is ``(round(H0 / downsample), round(W0 / downsample))``; pixel ``i`` covers
    level-0 ``[i * downsample, (i + 1) * downsample)``. ``level`` is the level read
    (:meth:`Slide.best_level`). Reads: :meth:`read_box` and :meth:`read_rows` (the
    predictor's reader interface, with ``shape``).
    """

    def __init__(self, slide: Slide, downsample: float) -> None:
        if not downsample > 0:
            raise InputError(f"downsample {downsample}: must be above 0")
        self.slide = slide
        self.downsample = float(downsample)
        self.level = slide.best_level(self.downsample)
        self.level_downsample = slide.level_downsamples[self.level]
        w0, h0 = slide.dimensions
        self.shape = (max(1, round(h0 / self.downsample)), max(1, round(w0 / self.downsample)))
        # Level pixels per view pixel along x and y (levels may not divide evenly).
        lw, lh = slide.level_dimensions[self.level]
        self._fx = self.downsample * lw / w0 if self.level else self.downsample
        self._fy = self.downsample * lh / h0 if self.level else self.downsample
        self.exact = math.isclose(self._fx, 1.0, abs_tol=1e-9) and math.isclose(
            self._fy, 1.0, abs_tol=1e-9
        )

    def read_box(self, x: float, y: float, w: int, h: int) -> np.ndarray:
        """``(h, w, 3) uint8``: view pixels from ``(x, y)`` (view coordinates)."""
        w, h = int(w), int(h)
        fx, fy = self._fx, self._fy
        if self.exact and float(x).is_integer() and float(y).is_integer():
            return self.slide._read_level(self.level, int(x), int(y), w, h)
        from PIL import Image

        ax0, ax1 = x * fx, (x + w) * fx
        ay0, ay1 = y * fy, (y + h) * fy
        # Margin of source pixels for the filter's support (wider when shrinking).
        mx, my = int(math.ceil(max(1.0, fx))) + 1, int(math.ceil(max(1.0, fy))) + 1
        lx0, ly0 = int(math.floor(ax0)) - mx, int(math.floor(ay0)) - my
        lx1, ly1 = int(math.ceil(ax1)) + mx, int(math.ceil(ay1)) + my
        lw, lh = self.slide.level_dimensions[self.level]
        cx0, cy0, cx1, cy1 = max(0, lx0), max(0, ly0), min(lw, lx1), min(lh, ly1)
        if cx1 <= cx0 or cy1 <= cy0:
            return np.full((h, w, 3), 255, dtype=np.uint8)
        src = self.slide._read_level(self.level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        pads = ((cy0 - ly0, ly1 - cy1), (cx0 - lx0, lx1 - cx1), (0, 0))
        if any(a or b for a, b in pads):
            # Beyond the slide the edge is repeated so the filter sees no artificial border.
            src = np.pad(src, pads, mode="edge")
        box = (ax0 - lx0, ay0 - ly0, ax1 - lx0, ay1 - ly0)
        image = Image.fromarray(np.ascontiguousarray(src))
        out = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR, box=box))
        # View pixels whose centre lies outside the slide are glass.
        vh, vw = self.shape
        if x + w > vw or y + h > vh or x < 0 or y < 0:
            out = out.copy()
            xs = np.arange(w) + x
            ys = np.arange(h) + y
            out[(ys < 0) | (ys >= vh)] = 255
            out[:, (xs < 0) | (xs >= vw)] = 255
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Full-width view rows ``y0:y1`` (clipped) as ``(r, W, 3) uint8``."""
        y0, y1 = max(0, y0), min(self.shape[0], y1)
        return self.read_box(0, y0, self.shape[1], max(0, y1 - y0))


# ------------------------------------------------------------------------- backends


def _white(h: int, w: int) -> np.ndarray:
    return np.full((max(0, h), max(0, w), 3), 255, dtype=np.uint8)


class _OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: Path, fallback_mpp: float | None) -> None:
        import openslide

        super().__init__(path)
        self._osr = openslide.OpenSlide(str(path))
        props = self._osr.properties
        self.vendor = str(props.get("openslide.vendor", "?"))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
        values = [v for v in (mx, my) if v is not None]
        self.mpp = _plausible(sum(values) / len(values)) if values else None
        self.objective_power = _float(props.get("openslide.objective-power"))
        self._finish(fallback_mpp)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        props = self._osr.properties
        w, h = self.dimensions
        box = [props.get(f"openslide.bounds-{k}") for k in ("x", "y", "width", "height")]
        try:
            x, y = (int(float(v)) if v is not None else 0 for v in box[:2])
            bw = int(float(box[2])) if box[2] is not None else w - x
            bh = int(float(box[3])) if box[3] is not None else h - y
        except ValueError:
            return (0, 0, w, h)
        return (x, y, bw, bh)

    def _read_level(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        if w <= 0 or h <= 0:
            return _white(h, w)
        ds = self.level_downsamples[level]
        region = self._osr.read_region((round(lx * ds), round(ly * ds)), level, (w, h))
        rgba = np.asarray(region)
        rgb, alpha = rgba[..., :3], rgba[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha.astype(np.uint16)
        return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)

    def close(self) -> None:
        self._osr.close()


class _TiffSlide(Slide):
    backend = "tifffile"

    def __init__(self, path: Path, fallback_mpp: float | None) -> None:
        import tifffile

        super().__init__(path)
        self.vendor = "tiff"
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image data in TIFF")
            series = tif.series[0]
            levels = getattr(series, "levels", None) or [series]
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            self.mpp, self.objective_power = _tiff_resolution(tif, page)
        self._readers: list[Any] = [None] * len(levels)
        self._levels = [0]
        try:
            self._pyramid(levels)
        except BaseException:
            self.close()
            raise
        self._finish(fallback_mpp)

    def _pyramid(self, levels: list[Any]) -> None:
        """Levels 0.. of the first series that are reduced copies of the one above."""
        h0, w0 = self._reader(0).shape
        dims, downs = [(w0, h0)], [1.0]
        for index, level in enumerate(levels[1:], start=1):
            axes, shp = level.axes, level.shape
            h, w = int(shp[axes.index("Y")]), int(shp[axes.index("X")])
            if w >= dims[-1][0] or h >= dims[-1][1] or w < 1 or h < 1:
                continue  # not a reduced copy of the level above
            dims.append((w, h))
            downs.append(((w0 / w) + (h0 / h)) / 2.0)
            self._levels.append(index)
        self.level_dimensions, self.level_downsamples = tuple(dims), tuple(downs)

    def _reader(self, level: int) -> Any:
        from .tiff import TiffReader

        index = self._levels[level]
        if self._readers[index] is None:
            reader = TiffReader(self.path, cache_segments=256, level=index)
            # Two rows of segments: bands read down the slide overlap by less than that.
            reader.set_cache(max(256, 2 * reader.segments_per_row + 16))
            self._readers[index] = reader
        return self._readers[index]

    def _read_level(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        reader = self._reader(level)
        out = _white(h, w)
        lh, lw = reader.shape
        y0, y1, x0, x1 = max(0, ly), min(lh, ly + h), max(0, lx), min(lw, lx + w)
        if y1 > y0 and x1 > x0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = to_rgb8(
                reader.read_region(y0, y1, x0, x1)
            )
        return out

    def close(self) -> None:
        for reader in self._readers:
            if reader is not None:
                reader.close()


class _ImageSlide(Slide):
    backend = "image"

    def __init__(self, path: Path, fallback_mpp: float | None) -> None:
        super().__init__(path)
        self.vendor = "image"
        self._image = read_image(path)
        h, w = self._image.shape[:2]
        self.level_dimensions, self.level_downsamples = ((w, h),), (1.0,)
        self._finish(fallback_mpp)

    def _read_level(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        out = _white(h, w)
        ih, iw = self._image.shape[:2]
        y0, y1, x0, x1 = max(0, ly), min(ih, ly + h), max(0, lx), min(iw, lx + w)
        if y1 > y0 and x1 > x0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._image[y0:y1, x0:x1]
        return out


# ---------------------------------------------------------------------- resolution


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


_OME_UNITS = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _tiff_resolution(tif: Any, page: Any) -> tuple[float | None, float | None]:
    """``(mpp, objective power)`` of a TIFF from OME, Aperio text or resolution tags."""
    power = None
    desc = str(getattr(page, "description", "") or "")
    match = re.search(r"AppMag\s*=\s*([\d.]+)", desc)
    if match:
        power = _float(match.group(1))
    if getattr(tif, "is_ome", False) and tif.ome_metadata:
        xml = tif.ome_metadata
        sizes = []
        for axis in ("X", "Y"):
            m = re.search(rf'PhysicalSize{axis}="([^"]+)"', xml)
            unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
            if m and _float(m.group(1)) is not None:
                scale = _OME_UNITS.get(unit.group(1) if unit else "µm")
                if scale is not None:
                    sizes.append(float(m.group(1)) * scale)
        if sizes and _plausible(sum(sizes) / len(sizes)):
            return _plausible(sum(sizes) / len(sizes)), power
    match = re.search(r"MPP\s*=\s*([\d.]+)", desc)
    if match and _plausible(_float(match.group(1))):
        return _plausible(_float(match.group(1))), power
    tags = page.tags
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    microns = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit)
    values = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        if tag is None or microns is None:
            continue
        num, den = tag.value if isinstance(tag.value, Sequence) else (tag.value, 1)
        if num and den:
            values.append(microns / (float(num) / float(den)))
    return (_plausible(sum(values) / len(values)) if values else None), power


# --------------------------------------------------------------------------- opening


def _openslide_format(path: Path) -> str | None:
    try:
        import openslide
    except ImportError:  # pragma: no cover - a dependency; kept for a broken install
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


def open_slide(
    path: str | Path, *, fallback_mpp: float | None = None, backend: str = "auto"
) -> Slide:
    """Open any slide or image the library reads (see the module docstring).

    ``fallback_mpp`` is the resolution of a file that records none; ``backend`` forces
    ``"openslide"``, ``"tifffile"`` or ``"image"`` (default ``"auto"``).
    Raises :class:`InputError` naming the file and the reason for a missing, unknown or
    unreadable file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE_EXTS:
        raise InputError(
            f"{path}: unsupported extension {path.suffix!r} "
            f"(expected one of {', '.join(READABLE_EXTS)})"
        )
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if backend == "auto":
        if suffix in TIFF_EXTS:
            vendor = _openslide_format(path)
            backend = "openslide" if vendor not in (None, "generic-tiff") else "tifffile"
        elif suffix in SLIDE_EXTS:
            backend = "openslide"
        else:
            backend = "image"
    makers = {"openslide": _OpenSlideSlide, "tifffile": _TiffSlide, "image": _ImageSlide}
    if backend not in makers:
        raise InputError(f"backend {backend!r}: expected one of auto, {', '.join(makers)}")
    try:
        return makers[backend](path, fallback_mpp)
    except InputError:
        raise
    except Exception as exc:  # OpenSlide, tifffile and codecs raise many types
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        kind = "slide" if backend == "openslide" else "TIFF" if backend == "tifffile" else "image"
        raise InputError(f"{path}: cannot read {kind} ({text})") from exc
