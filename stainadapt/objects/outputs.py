"""``predict --instances``: objects, GeoJSON and CSV from the masks ``predict`` wrote.

Runs after :func:`stainadapt.inference.predict_paths`, on its outputs, so it works the
same for a one-process run and a torchrun job, and for a rerun that kept existing
masks. Per input ``NAME`` it reads ``OUT/NAME.png`` (or ``OUT/NAME.tif``) and, when
present, ``OUT/probabilities/NAME.*`` (for the mean probability), and writes
``OUT/NAME.geojson`` and ``OUT/NAME.csv``; then ``OUT/summary.csv`` over every input
that has a CSV. A slide mask records the slide's mpp (resolution tags) and tissue area
(:func:`stainadapt.inference.slides.read_mask_info`): its objects are measured with that
mpp rather than ``--mpp``, and its summary row adds ``tissue_mm2`` and
``glomeruli_per_mm2`` (count per mm² of tissue). TIFF masks go through
:func:`.tiled.objects_from_tiff` (bounded memory, objects merged across tile borders);
PNG masks are read whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, RunFailure
from .instances import GlomerulusObject, InstanceOptions, objects_from_arrays
from .tiled import objects_from_tiff
from .writers import read_summary_row, write_csv, write_geojson, write_summary

__all__ = ["SUMMARY_NAME", "ObjectsReport", "objects_for_mask", "write_prediction_objects"]

SUMMARY_NAME = "summary.csv"


@dataclass
class ObjectsReport:
    """What :func:`write_prediction_objects` did."""

    written: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    missing_masks: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    objects: int = 0
    summary: Path | None = None
    notes: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> None:
        """Raise :class:`RunFailure` listing the masks whose objects could not be written."""
        if self.failed:
            lines = "\n".join(f"  {p}: {why}" for p, why in self.failed)
            raise RunFailure(f"objects of {len(self.failed)} mask(s) not written:\n{lines}")


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def objects_for_mask(
    mask_path: str | Path,
    prob_path: str | Path | None,
    options: InstanceOptions,
    notes: list[str] | None = None,
) -> list[GlomerulusObject]:
    """Objects of one mask file written by ``predict`` (0/255; PNG or TIFF)."""
    mask_path = Path(mask_path)
    prob = Path(prob_path) if prob_path is not None and Path(prob_path).exists() else None
    if mask_path.suffix.lower() in (".tif", ".tiff"):
        return objects_from_tiff(mask_path, prob, options, notes)
    mask = _read_gray(mask_path) >= 128
    probs = _read_gray(prob).astype(np.float32) / 255.0 if prob is not None else None
    return objects_from_arrays(mask, probs, options, notes)


def write_prediction_objects(
    inputs: Sequence[str | Path],
    out: str | Path,
    options: InstanceOptions,
    *,
    overwrite: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> ObjectsReport:
    """GeoJSON + CSV per predicted image of ``inputs`` in ``out``, and ``summary.csv``.

    Existing GeoJSON/CSV newer than their mask are kept unless ``overwrite``. Inputs
    without a mask (their prediction failed) are listed in ``missing_masks``; a mask
    that cannot be read is listed in ``failed`` and the others go on
    (:meth:`ObjectsReport.raise_for_failures`).
    """
    from ..inference import collect_inputs, mask_suffix
    from ..inference.slides import read_mask_info

    files = collect_inputs(inputs)
    clash = [f for f in files if f.stem == Path(SUMMARY_NAME).stem]
    if clash:
        raise InputError(
            f"{clash[0]}: an input named 'summary' would overwrite {SUMMARY_NAME}; rename it"
        )
    out = Path(out)
    report = ObjectsReport()
    csvs: list[Path] = []
    tissue: dict[Path, float] = {}
    for path in files:
        suffix = mask_suffix(path)
        mask_path = out / f"{path.stem}{suffix}"
        if not mask_path.exists():
            report.missing_masks.append(path)
            continue
        info = read_mask_info(mask_path) if suffix == ".tif" else {}
        own = options
        if isinstance(info.get("mpp"), float):  # the slide's own resolution wins
            own = dataclasses.replace(options, mpp=info["mpp"])
        geojson, table = out / f"{path.stem}.geojson", out / f"{path.stem}.csv"
        csvs.append(table)
        if isinstance(info.get("tissue_mm2"), float):
            tissue[table] = info["tissue_mm2"]
        fresh = all(
            p.exists() and p.stat().st_mtime_ns >= mask_path.stat().st_mtime_ns
            for p in (geojson, table)
        )
        if fresh and not overwrite:
            report.existing.append(geojson)
            continue
        if progress is not None:
            progress(path)
        notes: list[str] = []
        try:
            objects = objects_for_mask(
                mask_path, out / "probabilities" / f"{path.stem}{suffix}", own, notes
            )
            write_geojson(geojson, objects, path.stem, own.mpp, own.class_name)
            write_csv(table, objects, own.mpp)
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # one bad mask
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if isinstance(exc, InputError):
                reason = str(exc).removeprefix(f"{mask_path}: ")
            report.failed.append((mask_path, reason))
            csvs.remove(table)
            continue
        report.notes.extend(f"{path.name}: {n}" for n in notes)
        report.written.append(geojson)
        report.objects += len(objects)
    csvs = [c for c in csvs if c.exists()]
    if csvs:
        rows = []
        for c in csvs:
            row = read_summary_row(c)
            if c in tissue:
                row["tissue_mm2"] = tissue[c]
                row["glomeruli_per_mm2"] = row["count"] / tissue[c] if tissue[c] > 0 else None
            rows.append(row)
        report.summary = write_summary(out / SUMMARY_NAME, rows)
    return report
