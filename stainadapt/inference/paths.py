"""Prediction of files and folders with a run folder's model: ``stainadapt predict``.

Each input gets a mask in the output folder (PNG for PNG/JPEG, tiled TIFF for TIFF and
scanner slides). Slides (``.svs``, ``.ndpi``, ``.mrxs``...) and TIFFs at least
:attr:`PredictOptions.stream_min_pixels` large are streamed at the model's resolution
with glass skipped (:mod:`.slides`, :mod:`.streaming`). Under torchrun the files are
dealt to the ranks and a streamed slide is shared by all of them
(:class:`.sharding.BandShards`); every rank returns the whole job's :class:`PredictReport`.
Test-time adaptation (``adapt``, ``adapt_scope``, ...) is :mod:`.adapt` and
:mod:`.adapt_files`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..data.io import image_shape, read_image, write_image
from ..data.overlay import draw_overlay
from ..data.resample import model_downsample
from ..data.slides import READABLE_EXTS, SLIDE_EXTS
from ..device import resolve_device
from ..errors import InputError, RunFailure
from ..runs import load_model, normalizer_from_meta
from .adapt import AdaptSettings
from .adapt_files import PredictAdaptation, write_predict_manifest
from .predictor import SlidingWindowPredictor
from .sharding import BandShards, file_owner
from .slides import SlidePrediction, plan_slide, predict_slide

__all__ = ["STREAM_MIN_PIXELS", "PredictOptions", "PredictReport", "collect_inputs",
           "mask_suffix", "predict_paths"]

#: TIFF inputs with at least this many pixels are streamed instead of read whole.
STREAM_MIN_PIXELS = 4096 * 4096


@dataclass
class PredictOptions:
    """How :func:`predict_paths` predicts; every field is a ``stainadapt predict`` flag.

    ``tile``/``threshold`` default to the run's ``image_size``/``threshold`` (model.json);
    ``normalize``/``reference`` fit a new normaliser instead of the run's own;
    ``probabilities`` and ``overlay`` write extra outputs; ``progress(path, done, total)``
    is called after each row of windows. ``mpp`` is the resolution (um/px) of slides
    whose file records none; ``min_tissue`` the fraction of a window that must be tissue
    for it to run (0: every window runs).

    Test-time adaptation (:mod:`.adapt`, :mod:`.adapt_files`): ``adapt`` is ``"none"``,
    ``"bn"`` (AdaBN) or ``"tent"``; ``adapt_scope`` ``"call"`` (one set of statistics for
    every input) or ``"file"``; ``adapt_windows`` bounds the sample, ``adapt_steps`` is
    TENT's step count, ``seed`` draws the sample; ``adapted_stats`` loads the statistics
    of an earlier call instead (for every input); ``adapt_progress(what, done, total)``
    is called during the adaptation pass.
    """

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    threshold: float | None = None
    probabilities: bool = False
    overlay: bool = False
    normalize: str | None = None
    reference: str | Path | None = None
    tta: bool = False
    device: str = "auto"
    amp: str = "auto"
    overwrite: bool = False
    min_tissue: float = 0.01
    stream_min_pixels: int = STREAM_MIN_PIXELS
    mpp: float | None = None
    progress: Callable[[Path, int, int], None] | None = None
    adapt: str = "none"
    adapt_scope: str = "call"
    adapt_windows: int = 64
    adapt_steps: int = 10
    seed: int = 0
    adapted_stats: str | Path | None = None
    adapt_progress: Callable[[str, int, int], None] | None = None

    def adapt_settings(self) -> AdaptSettings:
        """The adaptation fields as :class:`AdaptSettings` (checked: bad values raise)."""
        return AdaptSettings(mode=self.adapt, scope=self.adapt_scope,
                             windows=self.adapt_windows, steps=self.adapt_steps,
                             seed=self.seed, batch_size=self.batch_size)


@dataclass
class PredictReport:
    """What :func:`predict_paths` did: outputs, skipped existing ones, failures, tiles.

    ``adapted``: the test-time adaptation settings (as ``predict.json`` records them),
    ``None`` without adaptation.
    """

    written: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    tiles_total: int = 0
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    slides: list[tuple[Path, SlidePrediction]] = field(default_factory=list)
    adapted: dict[str, Any] | None = None

    def raise_for_failures(self) -> None:
        """Raise :class:`RunFailure` listing the inputs that could not be predicted."""
        if self.failed:
            n = len(self.failed) + len(self.written) + len(self.existing)
            lines = "\n".join(f"  {p}: {why}" for p, why in self.failed)
            raise RunFailure(f"{len(self.failed)} of {n} inputs could not be predicted:\n{lines}")


def _mrxs_of(folder: Path) -> Path | None:
    """The ``NAME.mrxs`` beside a 3DHistech data folder ``NAME``, if any."""
    for candidate in folder.parent.glob(f"{folder.name}.*"):
        if candidate.suffix.lower() == ".mrxs" and candidate.is_file():
            return candidate
    return None


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, plus the image and slide files (by suffix, sorted, not hidden) of
    folders.

    An MRXS slide is a file and a folder of the same name: the folder is part of the
    slide, never scanned (given itself, it stands for its ``.mrxs`` file).
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            mrxs = _mrxs_of(path)
            if mrxs is not None:
                files.append(mrxs)
                continue
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file()
                    and not p.name.startswith(".")
                    and p.suffix.lower() in READABLE_EXTS
                )
            )
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not files:
        raise InputError(
            f"no images in {', '.join(str(i) for i in inputs)} "
            f"(looked for {', '.join(READABLE_EXTS)})"
        )
    seen: dict[str, Path] = {}
    clashes = []
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            clashes.append(f"{seen[f.stem]} and {f}")
        seen.setdefault(f.stem, f)
    if clashes:
        raise InputError(
            "inputs with the same name would write the same output: " + "; ".join(clashes)
        )
    return list(dict.fromkeys(files))


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _is_slide(path: Path) -> bool:
    return path.suffix.lower() in SLIDE_EXTS


def mask_suffix(path: str | Path) -> str:
    """Suffix of the mask ``predict`` writes for input ``path``: ``.tif`` or ``.png``."""
    path = Path(path)
    return ".tif" if _is_tiff(path) or _is_slide(path) else ".png"


def _load_normalizer(spec: str | None, reference: str | Path | None, meta: dict[str, Any]):
    if spec is None:
        if reference is not None:
            raise InputError("--reference needs --normalize SPEC (e.g. --normalize macenko)")
        return normalizer_from_meta(meta.get("normalizer"))
    if reference is None:
        raise InputError(f"--normalize {spec} needs --reference IMAGE to fit the stain to")
    from ..registry import create

    return create("normalizers", spec).fit(read_image(reference))


def predict_paths(
    inputs: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    **overrides: Any,
) -> PredictReport:
    """Predict every input file (or image in an input folder) with the model of a run folder.

    ``options`` (default :class:`PredictOptions`), with any of its fields given as
    keywords on top (``predict_paths(inputs, run, out, tile=512, tta=True)``).
    Writes ``OUT/<stem>.png`` (0/255) for PNG/JPEG inputs and ``OUT/<stem>.tif`` for
    TIFF and slide inputs (streamed ones: pyramidal, level-0 size, with
    ``OUT/thumbnails/<stem>.png``); with ``probabilities`` also
    ``OUT/probabilities/<stem>.<ext>`` (uint8, probability x 255); with ``overlay``
    ``OUT/overlays/<stem>.png`` (not for streamed slides, which have their thumbnail).
    Outputs that exist are kept unless ``overwrite``, so a rerun resumes.
    With adaptation also the statistics (:mod:`.adapt_files`) and ``OUT/predict.json``.
    A file that fails is recorded in the report and the others go on; call
    :meth:`PredictReport.raise_for_failures` afterwards.
    """
    opts = dataclasses.replace(options or PredictOptions(), **overrides)
    opts.adapt_settings()  # bad adaptation flags fail before any work
    files = collect_inputs(inputs)
    dev = distributed.local_device(resolve_device(opts.device))
    with distributed.session(dev):
        report = _predict_files(files, model, Path(out), dev, opts)
        if distributed.is_active():  # every rank returns the whole job's report
            report = _merge_reports(distributed.all_gather_objects(report), files)
    if report.adapted is not None and distributed.is_main():
        write_predict_manifest(Path(out), model, report.adapted)
    return report


def _predict_files(
    files: list[Path], model: str | Path, out: Path, dev: torch.device, opts: PredictOptions
) -> PredictReport:
    """The loop of :func:`predict_paths`, for this rank's share under torchrun.

    Files below ``stream_min_pixels`` go to rank ``index % world``; a streamed slide is
    shared by every rank (:class:`BandShards`) and written by rank 0. In one process
    (world 1) every file is this process's.
    """
    world, rank = distributed.world_size(), distributed.rank() if distributed.is_active() else 0
    net, meta = load_model(model, device=dev)
    tile = int(opts.tile or meta.get("image_size") or 256)
    threshold = opts.threshold
    if threshold is None:
        threshold = float(meta.get("threshold", 0.5) if meta.get("threshold") is not None else 0.5)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold}: must be between 0 and 1")
    normalizer = _load_normalizer(opts.normalize, opts.reference, meta)
    predictor = SlidingWindowPredictor(
        net, tile, opts.overlap, batch_size=opts.batch_size, device=dev, amp=opts.amp,
        tta=opts.tta, normalizer=normalizer, min_tissue=opts.min_tissue,
    )  # fmt: skip
    model_mpp = _model_mpp(meta)
    progress = opts.progress
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport()
    adaptation, notes = PredictAdaptation.create(
        predictor, opts.adapt_settings(), opts.adapted_stats, out, opts.min_tissue,
        opts.stream_min_pixels, opts.adapt_progress, (model_mpp, opts.mpp))
    report.notes.extend(notes if rank == 0 else [])
    if adaptation is not None:
        adaptation.start(files)
    for index, path in enumerate(files):
        suffix = mask_suffix(path)
        mask_path = out / f"{path.stem}{suffix}"
        prob_path = out / "probabilities" / f"{path.stem}{suffix}" if opts.probabilities else None
        wanted = [mask_path] + ([prob_path] if prob_path else [])
        # The header decides streaming on every rank alike; an unreadable header is
        # raised below by the rank that owns the file, as in one process.
        shape: tuple[int, int] | None = None
        shape_error: Exception | None = None
        if _is_tiff(path):
            try:
                shape = image_shape(path)
            except Exception as exc:
                shape_error = exc
        streamed = _is_slide(path) or (
            shape is not None and shape[0] * shape[1] >= opts.stream_min_pixels
        )
        shared = world > 1 and streamed
        if world > 1 and not shared and file_owner(index, world) != rank:
            continue  # another rank's file
        done_already = not opts.overwrite and all(p.exists() for p in wanted)
        if shared:  # rank 0 decides for everyone: only it writes this file
            done_already = distributed.broadcast_object(done_already)
        if done_already:
            if rank == 0 or not shared:
                report.existing.append(mask_path)
            continue

        def step(done: int, total: int, path: Path = path) -> None:
            if progress is not None:
                progress(path, done, total)

        before_total, before_skipped = predictor.stats.tiles_total, predictor.stats.tiles_skipped
        try:
            if shape_error is not None:
                raise shape_error
            if adaptation is not None:
                adaptation.before_file(path, shared)
            if shared and rank != 0:
                _serve_slide(predictor, path, model_mpp, opts.mpp, BandShards(rank, world, dev))
                continue
            if streamed:
                shard = BandShards(rank, world, dev) if shared else None
                result = _predict_slide_file(
                    predictor, path, out, mask_path, prob_path, threshold, step, shard,
                    model_mpp, opts.mpp,
                )  # fmt: skip
                report.notes.extend(result.notes)
                report.slides.append((path, result))
                if opts.overlay and result.thumbnail is None:
                    report.notes.append(f"{path.name}: no overlay for a streamed slide")
            else:
                image = read_image(path)
                prob = predictor.predict(image, step)
                mask = prob > threshold
                if prob_path is not None:
                    write_image(prob_path, np.rint(prob * 255.0).astype(np.uint8))
                if opts.overlay:
                    picture = draw_overlay(image, mask, width=2)
                    write_image(out / "overlays" / f"{path.stem}.png", picture)
                write_image(mask_path, mask)
            report.written.append(mask_path)
        except InputError as exc:
            report.failed.append((path, str(exc).removeprefix(f"{path}: ")))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            report.failed.append((path, reason))
        finally:
            report.tiles_total += predictor.stats.tiles_total - before_total
            report.tiles_skipped += predictor.stats.tiles_skipped - before_skipped
            if adaptation is not None:
                adaptation.after_file()
    if adaptation is not None:
        report.adapted = adaptation.summary
        report.notes.extend(adaptation.finish_notes() if rank == 0 else adaptation.notes)
    return report


def _model_mpp(meta: dict[str, Any]) -> float | None:
    """The resolution a model was trained at (model.json ``mpp``), if it records one."""
    value = meta.get("mpp")
    try:
        mpp = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return mpp if mpp is not None and mpp > 0 else None


def _predict_slide_file(
    predictor: SlidingWindowPredictor, path: Path, out: Path, mask_path: Path,
    prob_path: Path | None, threshold: float, step: Callable[[int, int], None],
    shard: BandShards | None, model_mpp: float | None, fallback_mpp: float | None,
) -> SlidePrediction:
    """Rank 0's part of a streamed slide: plan it, tell the other ranks its size, predict.

    The other ranks (:func:`_serve_slide`) learn the size of the image the windows run
    on (or ``None``: it did not open) before they open the slide themselves.
    """
    plan, error = None, None
    try:
        plan = plan_slide(path, model_mpp, fallback_mpp,
                          model_downsample=model_downsample(predictor.model))
    except Exception as exc:
        error = exc
    if shard is not None:
        distributed.broadcast_object(plan.reader.shape if plan is not None else None)
    if plan is None:
        assert error is not None
        raise error
    try:
        if prob_path is not None:
            prob_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return predict_slide(
                predictor, plan, mask_path, threshold, prob_path, step, shard,
                thumbnail_path=out / "thumbnails" / f"{path.stem}.png",
            )  # fmt: skip
        except Exception:
            if shard is not None:  # receive what the other ranks still send
                shard.drain(predictor.group_sizes(plan.reader.shape), predictor.tile)
            raise
    finally:
        plan.close()


def _serve_slide(predictor: SlidingWindowPredictor, path: Path, model_mpp: float | None,
                 fallback_mpp: float | None, shard: BandShards) -> None:
    """A non-zero rank's part of a shared slide: compute its bands, send them to rank 0."""
    shape = distributed.broadcast_object(None)
    if shape is None:
        return  # it did not open on rank 0, which reports it
    try:
        plan = plan_slide(path, model_mpp, fallback_mpp,
                          model_downsample=model_downsample(predictor.model))
    except Exception:
        with contextlib.suppress(RuntimeError):  # answer every group "failed"
            predictor.serve_rows(None, shape, shard)
        raise  # the open error itself is this rank's reason
    try:
        predictor.serve_rows(plan.reader, shape, shard)
    finally:
        plan.close()


def _merge_reports(parts: list[PredictReport], files: list[Path]) -> PredictReport:
    """One report from every rank's, in input order (stems are unique, see collect_inputs).

    A shared slide that failed on a non-zero rank is listed once, with that rank's own
    reason rather than rank 0's "rank N could not predict" relay.
    """
    order = {f.stem: i for i, f in enumerate(files)}

    def key(p: Path) -> int:
        return order.get(Path(p).stem, len(order))

    merged = PredictReport()
    merged.written = sorted({p for r in parts for p in r.written}, key=key)
    merged.existing = sorted({p for r in parts for p in r.existing}, key=key)
    failed: dict[Path, str] = {}
    for r in reversed(parts):
        for p, why in r.failed:
            failed.setdefault(p, why)
    merged.failed = sorted(failed.items(), key=lambda item: key(item[0]))
    merged.tiles_total = sum(r.tiles_total for r in parts)
    merged.tiles_skipped = sum(r.tiles_skipped for r in parts)
    merged.notes = list(dict.fromkeys(n for r in parts for n in r.notes))
    merged.slides = sorted((s for r in parts for s in r.slides), key=lambda item: key(item[0]))
    merged.adapted = parts[0].adapted
    return merged
