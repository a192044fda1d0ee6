"""The sample test-time adaptation estimates on: tissue windows of the inputs, as predicted.

:func:`sample_windows` draws up to ``count`` windows of the predictor's tile size in a
seeded order from the windows that cover each input with the least overlap, passing
over glass (the predictor's ``min_tissue`` test). Every input is read the way its
prediction reads it (:func:`.paths.predict_paths`): PNG/JPEG and small TIFFs whole;
scanner slides and large TIFFs through :func:`.slides.plan_slide`, at the model's
resolution, window by window, with the slide's tissue map saying what is glass. So the
statistics describe the windows the network will see, and memory holds the sample,
never the slide. Same inputs and seed, same sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .windows import window_starts, window_tissue_fraction

__all__ = ["sample_windows"]


def _candidates(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Window starts ``(y, x)``, row-major, covering an image with the least overlap
    (padded below a tile, as the predictor pads)."""
    h, w = max(shape[0], tile), max(shape[1], tile)
    return [(y, x) for y in window_starts(h, tile, 0) for x in window_starts(w, tile, 0)]


def _pad(window: np.ndarray, tile: int) -> np.ndarray:
    """``(tile, tile, 3)``: symmetric padding at the bottom/right, as the predictor pads."""
    h, w = window.shape[:2]
    if h == tile and w == tile:
        return window
    return np.pad(window, ((0, tile - h), (0, tile - w), (0, 0)), mode="symmetric")


class _Source:
    """Windows of one PNG/JPEG or small TIFF, read whole (as the predictor reads it).

    ``positions``: the candidate windows; ``judged``: the tissue test was made on them
    already (the pixels need not be tested again).
    """

    judged = False

    def __init__(self, path: Path, tile: int, downsample: float = 1.0) -> None:
        from ..data.io import image_shape
        from ..data.resample import scaled_shape

        self.path, self.tile, self.downsample = path, tile, downsample
        self.shape = scaled_shape(image_shape(path), downsample)  # as the model sees it
        self.positions = _candidates(self.shape, tile)

    def read(self, positions: list[tuple[int, int]]) -> list[np.ndarray]:
        from ..data.io import read_image
        from ..data.resample import downsample_image

        image, t = downsample_image(read_image(self.path), self.downsample), self.tile
        return [_pad(image[y:y + t, x:x + t], t) for y, x in positions]


class _SlideSource(_Source):
    """Windows of a slide or streamed TIFF, read as :func:`.slides.predict_slide` reads
    them: through the slide reader at the model's resolution (:func:`.slides.plan_slide`),
    window by window, so memory holds the sample, never the slide.

    With a tissue map (the one prediction skips glass with) the candidates are only the
    windows with ``min_tissue`` of tissue under it; the map is made once, here, and the
    slide is closed between rounds.
    """

    def __init__(self, path: Path, tile: int, min_tissue: float,
                 model_mpp: float | None, fallback_mpp: float | None,
                 model_downsample: float = 1.0) -> None:
        from .slides import plan_slide

        self.path, self.tile = path, tile
        self._mpp = (model_mpp, fallback_mpp)
        self._downsample = model_downsample
        plan = plan_slide(path, model_mpp, fallback_mpp, tissue=min_tissue > 0,
                          model_downsample=model_downsample)
        try:
            self.shape = plan.reader.shape
            self.positions = _candidates(self.shape, tile)
            judge = plan.reader.tissue_fraction
            if judge is not None:
                self.positions = [(y, x) for y, x in self.positions
                                  if judge(y, x, tile) >= min_tissue]
                self.judged = True
        finally:
            plan.close()

    def read(self, positions: list[tuple[int, int]]) -> list[np.ndarray]:
        from .slides import plan_slide

        plan = plan_slide(self.path, *self._mpp, tissue=False,
                          model_downsample=self._downsample)
        try:
            (h, w), t = self.shape, self.tile
            return [_pad(plan.view.read_box(x, y, min(t, w - x), min(t, h - y)), t)
                    for y, x in positions]
        finally:
            plan.close()


def _open_source(path: Path, tile: int, min_tissue: float, stream_min_pixels: int,
                 model_mpp: float | None, fallback_mpp: float | None,
                 model_downsample: float = 1.0) -> _Source:
    """The source of ``path``: streamed as :func:`.paths.predict_paths` streams it (a
    scanner slide, or a TIFF of at least ``stream_min_pixels``), else read whole."""
    from ..data.io import TIFF_EXTS, image_shape
    from ..data.slides import SLIDE_EXTS

    suffix = path.suffix.lower()
    streamed = suffix in SLIDE_EXTS
    if suffix in TIFF_EXTS:
        h, w = image_shape(path)
        streamed = h * w >= stream_min_pixels
    if streamed:
        return _SlideSource(path, tile, min_tissue, model_mpp, fallback_mpp, model_downsample)
    return _Source(path, tile, model_downsample)


def sample_windows(
    paths: Sequence[str | Path],
    tile: int,
    count: int,
    seed: int = 0,
    min_tissue: float = 0.01,
    stream_min_pixels: int = 4096 * 4096,
    model_mpp: float | None = None,
    fallback_mpp: float | None = None,
    model_downsample: float = 1.0,
) -> tuple[np.ndarray, list[str]]:
    """A seeded sample of up to ``count`` tissue windows ``(N, tile, tile, 3) uint8``.

    Positions: the ``tile`` windows that cover every file with the least overlap (files
    smaller than a tile padded as the predictor pads them), all files pooled, in an
    order drawn from ``seed``; a window whose tissue fraction is below ``min_tissue``
    is passed over. Slides and TIFFs of at least ``stream_min_pixels`` are read as
    prediction reads them: at ``model_mpp`` (the model's resolution; ``fallback_mpp``
    for a slide that records none), with the slide's tissue map deciding what is glass
    (:class:`_SlideSource`); every input is resampled ``model_downsample`` times
    coarser where no resolution says otherwise, as the model was trained. Candidates
    are read in rounds, each file opened once per round. A file that cannot be read is
    left out (its prediction reports why).
    Returns the windows and notes (files left out; fewer windows than asked).
    """
    notes: list[str] = []
    sources: list[_Source] = []
    for p in map(Path, paths):
        try:
            sources.append(_open_source(p, tile, min_tissue, stream_min_pixels, model_mpp,
                                        fallback_mpp, model_downsample))
        except Exception as exc:  # reported again by the prediction of that file
            notes.append(f"{p.name}: left out of the adaptation sample ({exc})".splitlines()[0])
    sizes = np.array([len(src.positions) for src in sources], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    order = np.random.default_rng(seed).permutation(int(offsets[-1]))
    stride = 4 if tile >= 64 else 1
    kept: list[np.ndarray] = []
    failed: set[int] = set()
    pos = 0
    while len(kept) < count and pos < len(order):
        chunk = order[pos:pos + max(2 * (count - len(kept)), 8)]
        pos += len(chunk)
        by_file: dict[int, list[tuple[int, tuple[int, int]]]] = {}
        for rank, flat in enumerate(chunk.tolist()):
            f = int(np.searchsorted(offsets, flat, side="right") - 1)
            if f not in failed:
                by_file.setdefault(f, []).append((rank, sources[f].positions[flat - offsets[f]]))
        got: dict[int, np.ndarray] = {}
        for f, items in sorted(by_file.items()):
            try:
                windows = sources[f].read([yx for _, yx in items])
            except Exception as exc:
                notes.append(f"{sources[f].path.name}: left out of the adaptation sample "
                             f"({type(exc).__name__}: {exc})".splitlines()[0])
                failed.add(f)
                continue
            test = min_tissue > 0 and not sources[f].judged
            for (rank, _), window in zip(items, windows, strict=True):
                if not test or window_tissue_fraction(window, stride) >= min_tissue:
                    got[rank] = window
        for rank in sorted(got):
            if len(kept) < count:
                kept.append(got[rank])
    if not kept:
        return np.zeros((0, tile, tile, 3), np.uint8), notes
    if len(kept) < count:
        notes.append(f"adaptation sample: all {len(kept)} tissue window(s) of {tile} px the "
                     f"input(s) hold, fewer than --adapt-windows {count}")
    return np.stack(kept), notes
