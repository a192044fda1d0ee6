"""Whole slides through the predictor: at the model's resolution, glass skipped.

For one slide (any format :func:`stainadapt.data.slides.open_slide` reads, large TIFFs
included) :func:`predict_slide`:

1. **Resolution.** With a model that records the mpp it was trained at (``model.json``
   ``mpp``) and a slide whose mpp is known (from the file, else ``predict --mpp``), the
   slide is read ``model mpp / slide mpp`` times coarser than level 0, from the
   coarsest level at least that fine, resampled on the fly (:class:`SlideView`). A
   slide without mpp, or a model without one, is read at level 0 (the first case with a
   one-line note).
2. **Tissue.** A thumbnail (longer side :data:`THUMBNAIL_SIDE`) read from a low level
   gives a tissue mask (:func:`stainadapt.data.tissue.tissue_mask`: Otsu on saturation,
   specks removed, holes filled). A window runs only when at least ``min_tissue`` of
   its area is tissue under that mask; a band of glass is not even read. When no level
   is small enough to read the thumbnail cheaply (a flat TIFF of more than
   :data:`THUMBNAIL_MAX_READ` pixels) each window's own pixels are tested instead.
3. **Output.** The mask, at level-0 size, as a pyramidal tiled TIFF
   (:func:`.streaming.predict_rows_to_tiff`) whose resolution tags carry the slide's mpp
   and whose ImageDescription records what was read (:func:`read_mask_info`); and
   ``thumbnails/NAME.png`` (the size of the mask's coarsest level): the slide with the
   tissue outline (blue) and the predicted mask (green outline, tinted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.slides import Slide, SlideView, open_slide
from ..data.tissue import THUMBNAIL_SIDE, TissueMap, slide_tissue
from .predictor import SlidingWindowPredictor
from .sharding import BandShards
from .streaming import predict_rows_to_tiff

__all__ = [
    "THUMBNAIL_MAX_READ",
    "THUMBNAIL_SIDE",
    "SlidePlan",
    "SlidePrediction",
    "plan_slide",
    "predict_slide",
    "read_mask_info",
]

#: Most pixels of a level read to make that thumbnail (else windows are tested one by one).
THUMBNAIL_MAX_READ = 2**26
#: Relative difference of model and slide mpp under which the slide is read as it is.
_SAME_MPP = 0.01
_MASK_TAG = "stainadapt mask"


class _SlideRows:
    """The predictor's reader over a :class:`SlideView`, with the tissue map's answer."""

    def __init__(self, view: SlideView, tissue: TissueMap | None) -> None:
        self.view, self.tissue = view, tissue
        self.shape = view.shape
        # Without a map the predictor tests each window's own pixels.
        self.tissue_fraction = self._fraction if tissue is not None else None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.view.read_rows(y0, y1)

    def _fraction(self, y: int, x: int, side: int) -> float:
        """Fraction of the view's window at ``(y, x)``, ``side`` square, that is tissue."""
        d = self.view.downsample
        assert self.tissue is not None
        return self.tissue.box_fraction(x * d, y * d, (x + side) * d, (y + side) * d)


@dataclass
class SlidePlan:
    """How a slide is read: its view at the model's resolution and the tissue found."""

    slide: Slide
    reader: Any
    downsample: float
    tissue: TissueMap | None
    thumbnail: np.ndarray | None
    notes: list[str] = field(default_factory=list)

    @property
    def view(self) -> SlideView:
        return self.reader.view

    def close(self) -> None:
        self.slide.close()


def plan_slide(
    path: str | Path,
    model_mpp: float | None = None,
    fallback_mpp: float | None = None,
    tissue: bool = True,
    *,
    model_downsample: float = 1.0,
) -> SlidePlan:
    """Open ``path`` and decide the level, scale and tissue windows (module docstring).

    ``model_downsample`` (``model.downsample``): where the model or the slide records no
    resolution, the slide is read that many times coarser than level 0, as the model's
    training tiles were.

    Raises :class:`~stainadapt.errors.InputError` for a slide that cannot be read.
    """
    path = Path(path)
    slide = open_slide(path, fallback_mpp=fallback_mpp)
    try:
        notes: list[str] = []
        # both resolutions known: their ratio decides (1 when they match); otherwise the
        # model's own factor, relative to level 0
        downsample = float(model_downsample)
        if model_mpp is not None and slide.mpp is not None:
            ratio = float(model_mpp) / slide.mpp
            downsample = ratio if abs(ratio - 1.0) > _SAME_MPP else 1.0
        elif model_mpp is not None:
            where = "level 0" if downsample == 1.0 else f"{downsample:g}x level 0"
            notes.append(
                f"{path.name}: no resolution in the file and no --mpp; read at {where}, "
                f"not at the model's {model_mpp:g} um/px"
            )
        view = slide.view(downsample)
        tmap, thumb = None, None
        if tissue:
            d = max(1.0, max(slide.dimensions) / THUMBNAIL_SIDE)
            lw, lh = slide.level_dimensions[slide.best_level(d)]
            if lw * lh <= THUMBNAIL_MAX_READ:
                tmap, thumb = slide_tissue(slide, THUMBNAIL_SIDE)
        return SlidePlan(slide, _SlideRows(view, tmap), downsample, tmap, thumb, notes)
    except BaseException:
        slide.close()
        raise


@dataclass
class SlidePrediction:
    """What :func:`predict_slide` read and wrote for one slide."""

    shape: tuple[int, int]
    mpp: float | None
    mpp_source: str | None
    downsample: float
    level: int
    level_downsample: float
    tissue_fraction: float | None
    tissue_mm2: float | None
    thumbnail: Path | None
    notes: list[str] = field(default_factory=list)


def _mask_description(plan: SlidePlan) -> str:
    slide = plan.slide
    fields = [_MASK_TAG, f"source={slide.path.name}"]
    if slide.mpp is not None:
        fields.append(f"mpp={slide.mpp:.6g}")
    fields += [f"downsample={plan.downsample:.6g}", f"level={plan.view.level}"]
    if plan.tissue is not None:
        fields.append(f"tissue_fraction={plan.tissue.fraction:.6g}")
        area = plan.tissue.area_mm2(slide.mpp)
        if area is not None:
            fields.append(f"tissue_mm2={area:.6g}")
    return "; ".join(fields)


def read_mask_info(path: str | Path) -> dict[str, Any]:
    """What a slide mask's ImageDescription records (``{}`` for another file).

    Keys: ``source``, ``mpp``, ``downsample``, ``level``, ``tissue_fraction``,
    ``tissue_mm2`` (numbers as floats), each only when it was known.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            text = str(tif.pages[0].description or "")
    except Exception:
        return {}
    if not text.startswith(_MASK_TAG):
        return {}
    info: dict[str, Any] = {}
    for key, value in re.findall(r"(\w+)=([^;]*)", text):
        try:
            info[key] = float(value)
        except ValueError:
            info[key] = value.strip()
    return info


def _write_thumbnail(path: Path, plan: SlidePlan, smallest: np.ndarray) -> Path | None:
    """``thumbnails/NAME.png``: the slide, tissue outline (blue), mask (green)."""
    from PIL import Image

    from ..data.io import write_image
    from ..data.overlay import draw_overlay

    if plan.thumbnail is None or plan.tissue is None or smallest.size == 0:
        return None
    # The picture has the size of the mask's coarsest level (at most 1024 px a side).
    h, w = smallest.shape
    image = np.asarray(Image.fromarray(plan.thumbnail).resize((w, h), Image.Resampling.BOX))
    tissue = Image.fromarray(plan.tissue.mask).resize((w, h), Image.Resampling.NEAREST)
    picture = draw_overlay(image, np.asarray(tissue), colour=(0, 0, 255))
    picture = draw_overlay(picture, smallest >= 128, colour=(0, 200, 0), width=2, tint=0.35)
    return write_image(path, picture)


def predict_slide(
    predictor: SlidingWindowPredictor,
    plan: SlidePlan,
    mask_path: str | Path,
    threshold: float = 0.5,
    prob_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: BandShards | None = None,
    thumbnail_path: str | Path | None = None,
) -> SlidePrediction:
    """Predict a planned slide (:func:`plan_slide`) and write its mask (module docstring).

    The mask is ``(H0, W0)`` (level 0) whatever resolution the model reads at; with
    ``thumbnail_path`` the overview picture is written there (when a tissue map exists).
    """
    slide, view = plan.slide, plan.view
    w0, h0 = slide.dimensions
    smallest = predict_rows_to_tiff(
        predictor, plan.reader, mask_path, threshold, prob_path, progress, shard,
        out_shape=(h0, w0), downsample=plan.downsample, mpp=slide.mpp,
        description=_mask_description(plan),
    )  # fmt: skip
    thumb = None
    if thumbnail_path is not None:
        thumb = _write_thumbnail(Path(thumbnail_path), plan, smallest)
    tissue = plan.tissue
    return SlidePrediction(
        shape=(h0, w0),
        mpp=slide.mpp,
        mpp_source=slide.mpp_source,
        downsample=plan.downsample,
        level=view.level,
        level_downsample=view.level_downsample,
        tissue_fraction=tissue.fraction if tissue is not None else None,
        tissue_mm2=tissue.area_mm2(slide.mpp) if tissue is not None else None,
        thumbnail=thumb,
        notes=list(plan.notes),
    )

