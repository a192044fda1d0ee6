"""Training tiles cut from whole slides and their annotations (``stainadapt tiles``).

Every slide becomes square tiles of ``size`` pixels at one resolution (``mpp``, microns
per pixel), resampled from the slide's own resolution, written into a domain folder
(``OUT/images/NAME.png`` and, for annotated slides, ``OUT/masks/NAME.png`` with 0/255),
so that ``stainadapt train`` reads them as they are. ``NAME`` is
``<slide stem>_<x>_<y>``, the tile's top-left corner in level-0 pixels.

Which tiles: glomerulus tiles centred on every annotated glomerulus, random tissue
tiles from the regions known to be fully annotated, or random tissue tiles of an
unlabelled slide (:mod:`stainadapt.data.tile_plan` gives the rules).

``OUT/tiles.json`` records the resolution (``mpp``), the tile size and, for every tile,
its slide, annotation file, level-0 box ``[x, y, w, h]``, kind and foreground fraction
(the share of glomerulus pixels in its mask). Rerunning into the same folder keeps existing
tiles (``overwrite`` redoes them); a folder holding tiles of another resolution or size,
or labelled tiles when these are unlabelled (or the reverse), is refused.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RunFailure
from .annotations import (
    AnnotationSet,
    check_within,
    rasterize,
    read_annotations,
    split_annotations,
)
from .tile_plan import PlannedTile, TileOptions, plan_tiles
from .tissue import slide_tissue

__all__ = [
    "SIDECAR",
    "TileOptions",
    "TileReport",
    "collect_slides",
    "cut_tiles",
    "pair_annotations",
    "read_sidecar",
    "slide_origin",
]

#: The record of a tile folder, beside ``images/`` and ``masks/``.
SIDECAR = "tiles.json"
_ANNOTATION_EXTS = (".geojson", ".json")


@dataclass
class TileReport:
    """What :func:`cut_tiles` did: tiles written and kept, per-slide counts, failures."""

    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    slides: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> None:
        """Raise :class:`RunFailure` listing the slides that failed (one line each)."""
        if self.failed:
            n = len(self.failed) + len(self.slides)
            lines = "\n".join(f"  {line}" for line in self.failed)
            raise RunFailure(f"{len(self.failed)} of {n} slides could not be tiled:\n{lines}")


# ------------------------------------------------------------------------------- pairing


def _annotation_key(path: Path) -> str:
    name = path.name
    for ext in _ANNOTATION_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _expand(paths: Sequence[Path], exts: tuple[str, ...], what: str) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts)
            if not found:
                raise InputError(f"{p}: no {what} in this folder ({', '.join(exts)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def collect_slides(
    slides: Sequence[str | Path], annotations: Sequence[str | Path] | None = None
) -> tuple[list[Path], list[Path] | None]:
    """Slide and annotation files from files and folders (folders not searched recursively).

    A folder gives its slides (scanner formats and TIFF; PNG/JPEG only when named) or
    its ``.geojson``/``.json`` files.
    """
    from .io import TIFF_EXTS
    from .slides import SLIDE_EXTS

    slide_files = _expand([Path(s) for s in slides], SLIDE_EXTS + TIFF_EXTS, "slides")
    if not annotations:
        return slide_files, None
    return slide_files, _expand([Path(a) for a in annotations], _ANNOTATION_EXTS,
                                "GeoJSON files")


def pair_annotations(
    slides: Sequence[Path], annotations: Sequence[Path] | None
) -> list[tuple[Path, Path | None]]:
    """Pair each slide with its annotation file (``None``: unlabelled slides).

    By name first: ``case1.svs`` pairs with ``case1.geojson`` or ``case1.svs.geojson``.
    When no file matches any slide by name and there are as many files as slides, they
    pair in the order given. Anything else is an :class:`InputError` naming the slide
    or file left without a partner, before any tile is cut.
    """
    slides = [Path(s) for s in slides]
    if not annotations:
        return [(s, None) for s in slides]
    files = [Path(a) for a in annotations]
    if len({s.name for s in slides}) != len(slides) or len({s.stem for s in slides}) != len(
        slides
    ):
        dup = next(s for s in slides if sum(t.stem == s.stem for t in slides) > 1)
        raise InputError(f"{dup}: two slides of the same name; give them one at a time")
    by_key: dict[str, Path] = {}
    for f in files:
        key = _annotation_key(f)
        if key in by_key:
            raise InputError(f"{f}: same name as {by_key[key]} (one annotation file per slide)")
        by_key[key] = f
    pairs: list[tuple[Path, Path | None]] = []
    for s in slides:
        match = by_key.get(s.name) or by_key.get(s.stem)
        pairs.append((s, match))
    matched = [a for _, a in pairs if a is not None]
    if not matched and len(files) == len(slides):
        return list(zip(slides, files, strict=True))
    rule = ("slides pair with annotation files by name (case1.svs with case1.geojson or "
            "case1.svs.geojson), or in the order given when no name matches")
    for s, a in pairs:
        if a is None:
            raise InputError(f"{s}: no annotation file for this slide ({rule})")
    unused = [f for f in files if f not in matched]
    if unused:
        raise InputError(f"{unused[0]}: annotation file of no slide given ({rule})")
    return pairs


# ------------------------------------------------------------------------------- sidecar


def read_sidecar(folder: str | Path) -> dict[str, Any] | None:
    """``FOLDER/tiles.json`` as a dict (``None`` when absent); :class:`InputError` if bad."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the tile record ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tiles"), list):
        raise InputError(f"{path}: not a tile record (no 'tiles' list)")
    return data


def _check_out(out: Path, options: TileOptions, labelled: bool) -> dict[str, Any]:
    """The folder's existing record, after refusing one that would mix tiles."""
    data = read_sidecar(out)
    if data is None:
        if (out / "images").is_dir() and any((out / "images").iterdir()):
            has_masks = (out / "masks").is_dir()
            if has_masks != labelled:
                what = "labelled" if has_masks else "unlabelled"
                raise InputError(
                    f"{out}: holds {what} tiles already; give another --out"
                )
        return {"mpp": options.mpp, "size": options.size, "labelled": labelled, "tiles": []}
    for key, value, flag in (("mpp", options.mpp, "--mpp"), ("size", options.size, "--size")):
        if data.get(key) is not None and not math.isclose(float(data[key]), float(value)):
            raise InputError(
                f"{out}: holds tiles at {key} {data[key]} ({SIDECAR}), not {flag} {value}; "
                "one domain folder holds one resolution and size: give another --out"
            )
    if data.get("labelled") is not None and bool(data["labelled"]) != labelled:
        what = "labelled" if data["labelled"] else "unlabelled"
        raise InputError(f"{out}: holds {what} tiles ({SIDECAR}); give another --out")
    data.update(mpp=options.mpp, size=options.size, labelled=labelled)
    return data


def _write_sidecar(out: Path, record: dict[str, Any]) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(out / SIDECAR, json.dumps(record, indent=1) + "\n")


# ------------------------------------------------------------------------------- cutting


def _slide_seed(seed: int, slide: Path) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(slide.name.encode("utf-8"))])


def _load_annotations(path: Path, options: TileOptions) -> AnnotationSet:
    return split_annotations(
        read_annotations(path), path, options.glomerulus_class, options.roi_class
    )


def _tile_slide(
    slide_path: Path,
    ann_path: Path | None,
    out: Path,
    options: TileOptions,
    record: dict[str, dict[str, Any]],
    report: TileReport,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    """Cut one slide's tiles into ``out``; InputError for anything wrong with its input."""
    from .io import write_image
    from .slides import open_slide

    annotations = _load_annotations(ann_path, options) if ann_path is not None else None
    with open_slide(slide_path, fallback_mpp=options.slide_mpp) as slide:
        if slide.mpp is None:
            raise InputError(
                f"{slide_path}: the slide records no resolution (mpp); give it with --slide-mpp"
            )
        width, height = slide.dimensions
        origin = slide_origin(slide) if options.bounds_origin else (0, 0)
        if annotations is not None:
            annotations = annotations.shifted(*origin)
            check_within(annotations, width, height, slide_path.name)
        side = options.size * slide.downsample_for(options.mpp)
        tissue = None
        if annotations is None or (options.negatives > 0 and (
                options.fully_annotated or annotations.regions)):
            tissue, _ = slide_tissue(slide)
        try:
            plan, notes = plan_tiles(annotations, (width, height), side, options,
                                     _slide_seed(options.seed, slide_path), tissue)
        except InputError as exc:
            raise InputError(f"{slide_path}: {exc}") from None
        report.notes.extend(f"{slide_path.name}: {n}" for n in notes)
        if annotations is not None:  # the glomeruli near a tile, without a scan of all
            from shapely import STRtree

            glomeruli = list(annotations.glomeruli)
            tree = STRtree(glomeruli)
        counts = {"glomerulus": 0, "random": 0, "unlabelled": 0, "existing": 0}
        seen: set[str] = set()
        for done, tile in enumerate(plan, start=1):
            name = f"{slide_path.stem}_{tile.x}_{tile.y}"
            if progress is not None:
                progress(slide_path.name, done, len(plan))
            if name in seen:  # a random tile where a glomerulus tile already is
                continue
            seen.add(name)
            image_path = out / "images" / f"{name}.png"
            mask_path = out / "masks" / f"{name}.png"
            exists = image_path.is_file() and (annotations is None or mask_path.is_file())
            entry = {
                "name": name,
                "slide": str(slide_path),
                "annotations": None if ann_path is None else str(ann_path),
                "box": [tile.x, tile.y, round(tile.side, 3), round(tile.side, 3)],
                "slide_mpp": slide.mpp,
                "slide_mpp_source": slide.mpp_source,
                "annotation_origin": list(origin),
                "kind": tile.kind,
            }
            if exists and not options.overwrite:
                report.existing.append(name)
                counts["existing"] += 1
                record.setdefault(name, entry)
                continue
            image = slide.read_at(tile.x, tile.y, tile.side, tile.side, options.mpp)
            image = _exact(image, options.size)
            if annotations is not None:
                near = [glomeruli[i] for i in tree.query(_shapely_box(tile))]
                mask = rasterize(near, tile.box, (options.size, options.size))
                entry["foreground"] = round(float(mask.mean()), 5)
                write_image(mask_path, mask)
            write_image(image_path, image)
            record[name] = entry
            report.written.append(name)
            counts[tile.kind] += 1
        report.slides[str(slide_path)] = counts


def slide_origin(slide: Any) -> tuple[int, int]:
    """Level-0 ``(x, y)`` where QuPath puts its ``(0, 0)`` on this slide.

    QuPath opens an OpenSlide slide cropped to the scanned area when OpenSlide reports
    one (``openslide.bounds-x``/``-y``: MRXS, some others), so its coordinates start
    there (:attr:`Slide.bounds <stainadapt.data.slides.Slide.bounds>`); a reader
    without ``bounds`` starts at ``(0, 0)``.
    """
    bounds = getattr(slide, "bounds", None)
    if bounds is None:
        return (0, 0)
    return int(bounds[0]), int(bounds[1])


def _shapely_box(tile: PlannedTile) -> Any:
    from shapely.geometry import box

    return box(tile.x, tile.y, tile.x + tile.side, tile.y + tile.side)


def _exact(image: np.ndarray, size: int) -> np.ndarray:
    """The read tile at exactly ``size`` x ``size`` (a resampled read may be off by one)."""
    if image.shape[:2] == (size, size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def cut_tiles(
    slides: Sequence[str | Path],
    out: str | Path,
    options: TileOptions,
    annotations: Sequence[str | Path] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TileReport:
    """Cut tiles from ``slides`` (paired with ``annotations``) into the domain folder ``out``.

    A slide whose input is bad (unreadable slide or annotation file, no resolution,
    polygons outside it) is listed in :attr:`TileReport.failed` and the others are
    still cut; :meth:`TileReport.raise_for_failures` turns that into exit code 1.
    Pairing problems and a folder that holds other tiles are an :class:`InputError`
    before anything is written. ``progress(slide name, done, total)`` is called per tile.
    """
    out = Path(out)
    pairs = pair_annotations([Path(s) for s in slides],
                             None if not annotations else [Path(a) for a in annotations])
    labelled = bool(annotations)
    data = _check_out(out, options, labelled)
    record = {t["name"]: t for t in data["tiles"] if isinstance(t, dict) and "name" in t}
    (out / "images").mkdir(parents=True, exist_ok=True)
    if labelled:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    report = TileReport()
    for slide_path, ann_path in pairs:
        try:
            _tile_slide(slide_path, ann_path, out, options, record, report, progress)
        except InputError as exc:  # every message starts with the file it is about
            report.failed.append(str(exc))
        except OSError as exc:
            report.failed.append(f"{slide_path}: cannot read ({exc.strerror or exc})")
        finally:
            data["tiles"] = [record[k] for k in sorted(record)]
            _write_sidecar(out, {**data, "seed": options.seed})
    return report
