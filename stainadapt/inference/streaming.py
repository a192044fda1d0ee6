"""Slides larger than memory: read band by band, written as a pyramidal tiled TIFF.

The predictor reads an image through any row reader (``shape``, ``read_rows``): a large
TIFF (:class:`stainadapt.data.tiff.TiffReader`, only the tiles/strips under the current
band are decoded) or a whole slide resampled to the model's resolution
(:class:`stainadapt.data.slides.SlideView`). The mask is written as a tiled
(:data:`OUTPUT_TILE` square), zlib-compressed TIFF through
``TiffWriter.write(data=<tile generator>)``, followed by reduced levels (each half the
size of the one above, down to a longer side of at most :data:`PYRAMID_MIN_SIDE`) as
successive pages marked reduced-resolution (NewSubfileType 1). tifffile lists them as
the levels of one series and OpenSlide opens the file as a ``generic-tiff`` pyramid
(OpenSlide does not list levels stored as SubIFDs, so they are not used). The
resolution tags carry the slide's mpp when it is known.

Reduced levels are built while the mask streams: each is the 2x2 mean of the level
above (a mask stays 0/255: a block is 255 when at least half of it is), its tiles are
compressed as they fill and spooled to a temporary file, then copied into the TIFF
after level 0 without decoding again. Working memory is a few bands of the slide's
width, whatever its height (with glibc's heap kept from growing: :mod:`.heap`).

When the model reads the slide at another resolution (``downsample`` != 1), the
probabilities come out at that resolution and are interpolated (bilinear, pixel
centres aligned) back to level-0 rows before thresholding: the mask always has the
slide's level-0 size.
"""

from __future__ import annotations

import contextlib
import math
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_save
from ..data.tiff import TiffReader
from .heap import limit_heap_growth
from .predictor import SlidingWindowPredictor
from .sharding import BandShards

__all__ = [
    "OUTPUT_TILE",
    "PYRAMID_MIN_SIDE",
    "predict_rows_to_tiff",
    "predict_tiff_streamed",
    "pyramid_shapes",
]

#: Tile side of the TIFF masks written by the streamed path.
OUTPUT_TILE = 256
#: Reduced levels are added until the longer side is at most this.
PYRAMID_MIN_SIDE = 1024


class _RowTiler:
    """Re-cuts row pieces ``(r, W) uint8`` into ``tile x tile`` tiles, row-major.

    Only one strip of ``tile`` rows is buffered. Edge tiles are zero-padded to full size,
    as TIFF tiles are.
    """

    def __init__(self, width: int, tile: int = OUTPUT_TILE) -> None:
        self.width, self.tile = width, tile
        self._buf = np.zeros((tile, width), dtype=np.uint8)
        self._filled = 0

    def _flush(self) -> list[np.ndarray]:
        t = self.tile
        out = []
        for x in range(0, self.width, t):
            tile = np.zeros((t, t), dtype=np.uint8)
            piece = self._buf[: self._filled, x : x + t]
            tile[: piece.shape[0], : piece.shape[1]] = piece
            out.append(tile)
        self._filled = 0
        return out

    def push(self, rows: np.ndarray) -> list[np.ndarray]:
        tiles: list[np.ndarray] = []
        pos = 0
        while pos < rows.shape[0]:
            n = min(self.tile - self._filled, rows.shape[0] - pos)
            self._buf[self._filled : self._filled + n] = rows[pos : pos + n]
            self._filled += n
            pos += n
            if self._filled == self.tile:
                tiles.extend(self._flush())
        return tiles

    def finish(self) -> list[np.ndarray]:
        return self._flush() if self._filled else []


def pyramid_shapes(
    shape: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE
) -> list[tuple[int, int]]:
    """``(H, W)`` of the reduced levels below ``shape`` (halving, rounding up)."""
    h, w = shape
    out = []
    while max(h, w) > min_side:
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


class _Halver:
    """Rows of one level in, rows of the level below out (2x2 mean; see the module doc)."""

    def __init__(self, width: int, binary: bool) -> None:
        self.width, self.binary = width, binary
        self._odd: np.ndarray | None = None

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        r = rows.astype(np.uint16)
        if r.shape[1] % 2:
            r = np.concatenate([r, r[:, -1:]], axis=1)
        s = r[0::2, 0::2] + r[1::2, 0::2] + r[0::2, 1::2] + r[1::2, 1::2]
        if self.binary:
            return np.where(s >= 2 * 255, 255, 0).astype(np.uint8)
        return ((s + 2) // 4).astype(np.uint8)

    def push(self, rows: np.ndarray) -> np.ndarray:
        if self._odd is not None:
            rows = np.concatenate([self._odd, rows])
            self._odd = None
        if rows.shape[0] % 2:
            self._odd, rows = rows[-1:].copy(), rows[:-1]
        return self._reduce(rows) if rows.shape[0] else rows[:0, : (self.width + 1) // 2]

    def finish(self) -> np.ndarray:
        if self._odd is None:
            return np.zeros((0, (self.width + 1) // 2), np.uint8)
        rows, self._odd = np.concatenate([self._odd, self._odd]), None
        return self._reduce(rows)


class _Pyramid:
    """The reduced levels of one output TIFF, built from its level-0 rows as they stream.

    Each level's tiles are zlib-compressed as they fill and appended to a temporary
    file; :meth:`pages` hands them back, level by level, as the bytes tifffile writes.
    ``smallest`` is the coarsest level (or level 0 itself, when it needs no pyramid),
    kept whole: at most :data:`PYRAMID_MIN_SIDE` on its longer side.
    """

    def __init__(self, shape: tuple[int, int], binary: bool) -> None:
        self.shape = shape
        self.shapes = pyramid_shapes(shape)
        widths = [shape[1]] + [w for _, w in self.shapes]
        self._halvers = [_Halver(widths[k], binary) for k in range(len(self.shapes))]
        self._tilers = [_RowTiler(w) for _, w in self.shapes]
        # closed by close(), which the writer calls in a finally
        self._spools = [tempfile.TemporaryFile() for _ in self.shapes]  # noqa: SIM115
        self._sizes: list[list[int]] = [[] for _ in self.shapes]
        self._smallest: list[np.ndarray] = []
        self._finished = False

    def _store(self, k: int, tiles: list[np.ndarray]) -> None:
        from imagecodecs import zlib_encode

        for tile in tiles:
            data = zlib_encode(np.ascontiguousarray(tile).tobytes())
            self._spools[k].write(data)
            self._sizes[k].append(len(data))

    def _feed(self, k: int, rows: np.ndarray, last: bool) -> None:
        """Level-``k`` rows (0: full resolution) into level ``k + 1`` and below."""
        if k == len(self.shapes):
            self._smallest.append(rows)
            return
        below = self._halvers[k].push(rows)
        if last:
            below = np.concatenate([below, self._halvers[k].finish()])
        tiler = self._tilers[k]
        self._store(k, tiler.push(below))
        if last:
            self._store(k, tiler.finish())
        if below.shape[0] or last:
            self._feed(k + 1, below, last)

    def push(self, rows: np.ndarray) -> None:
        self._feed(0, rows, last=False)

    def finish(self) -> None:
        """Flush the partial rows and tiles of every level (once; later calls do nothing).

        The TIFF writer calls it after level 0, from the thread that writes the file: a
        tile generator is not resumed after its last tile, so it cannot finish the levels.
        """
        if not self._finished:
            self._finished = True
            self._feed(0, np.zeros((0, self.shape[1]), np.uint8), last=True)

    @property
    def smallest(self) -> np.ndarray:
        """The coarsest level ``(h, w) uint8`` (after :meth:`finish`)."""
        rows = [r for r in self._smallest if r.shape[0]]
        width = self.shapes[-1][1] if self.shapes else self.shape[1]
        return np.concatenate(rows) if rows else np.zeros((0, width), np.uint8)

    def pages(self) -> Iterator[tuple[tuple[int, int], float, Iterator[bytes]]]:
        """``(shape, downsample, compressed tiles)`` of every reduced level, finest first."""
        for k, shape in enumerate(self.shapes):
            spool, sizes = self._spools[k], self._sizes[k]
            spool.seek(0)

            def tiles(spool: Any = spool, sizes: list[int] = sizes) -> Iterator[bytes]:
                for n in sizes:
                    yield spool.read(n)

            yield shape, 2.0 ** (k + 1), tiles()

    def close(self) -> None:
        for spool in self._spools:
            spool.close()


def _write_tiled_tiff(
    path: Path,
    shape: tuple[int, int],
    tiles: Iterable[np.ndarray],
    pyramid: _Pyramid | None = None,
    mpp: float | None = None,
    description: str | None = None,
) -> None:
    """Write ``tiles`` (row-major, OUTPUT_TILE square, uint8) as a zlib tiled TIFF, atomically.

    With ``pyramid`` (fed every level-0 row before the tile holding it is handed over)
    its reduced levels follow level 0; ``mpp`` sets the resolution tags (pixels per centimetre).
    """
    import tifffile

    height, width = shape
    total = height * width * (4 if pyramid is not None and pyramid.shapes else 3) // 3

    def res(scale: float) -> dict[str, Any]:
        if mpp is None:
            return {}
        per_cm = 1e4 / (mpp * scale)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    def writer(tmp: Path) -> None:
        common = {"dtype": np.uint8, "tile": (OUTPUT_TILE, OUTPUT_TILE), "compression": "zlib",
                  "photometric": "minisblack", "metadata": None}
        with tifffile.TiffWriter(tmp, bigtiff=total >= 2**31) as tw:
            tw.write(data=iter(tiles), shape=(height, width), description=description,
                     **common, **res(1.0))
            if pyramid is None:
                return
            pyramid.finish()
            for level_shape, scale, level_tiles in pyramid.pages():
                tw.write(data=level_tiles, shape=level_shape, subfiletype=1, **common,
                         **res(scale))

    atomic_save(path, writer)


class _TiffTileSink:
    """Writes a tiled TIFF from tiles pushed by another thread (for the second output)."""

    def __init__(self, path: Path, shape: tuple[int, int], pyramid: _Pyramid | None = None,
                 mpp: float | None = None) -> None:
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=64)
        self.error: BaseException | None = None

        self._ended = False

        def tiles() -> Iterator[np.ndarray]:
            while True:
                item = self._queue.get()
                if item is None:
                    self._ended = True
                    return
                yield item

        def work() -> None:
            try:
                _write_tiled_tiff(path, shape, tiles(), pyramid, mpp)
            except BaseException as exc:  # reported to the main thread
                self.error = exc
                while not self._ended:  # drain so the producer never blocks
                    self._ended = self._queue.get() is None

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def put(self, tile: np.ndarray) -> None:
        self._queue.put(tile)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class _RowResampler:
    """Rows of an image ``downsample`` times coarser than level 0, in; level-0 rows, out.

    Bilinear, with pixel centres aligned the way :class:`~stainadapt.data.slides.SlideView`
    samples (coarse pixel ``i`` covers level-0 ``[i d, (i + 1) d)``): level-0 row ``Y``
    reads coarse row ``(Y + 0.5) / d - 0.5``, clamped to the image. Rows come out as soon
    as the coarse rows they need are in, at most ``chunk`` at a time.
    """

    def __init__(self, src_shape: tuple[int, int], dst_shape: tuple[int, int],
                 downsample: float, chunk: int = 256) -> None:
        self.src_h, src_w = src_shape
        self.dst_h, dst_w = dst_shape
        self.d, self.chunk = float(downsample), chunk
        cols = np.clip((np.arange(dst_w) + 0.5) / self.d - 0.5, 0, src_w - 1)
        self._c0 = np.floor(cols).astype(np.int64)
        self._c1 = np.minimum(self._c0 + 1, src_w - 1)
        self._cw = (cols - self._c0).astype(np.float32)
        self._buf = np.zeros((0, src_w), np.float32)
        self._buf_y0 = 0  # source row of _buf[0]
        self._next = 0  # next level-0 row to emit

    def _src(self, y: np.ndarray) -> np.ndarray:
        return np.clip((y + 0.5) / self.d - 0.5, 0, self.src_h - 1)

    def push(self, y: int, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Take coarse rows ``y..`` (in order); yield ``(Y, level-0 rows)`` now computable."""
        self._buf = np.concatenate([self._buf, rows.astype(np.float32, copy=False)])
        have = self._buf_y0 + self._buf.shape[0]  # coarse rows [0, have) seen
        # Level-0 row Y needs coarse row ceil(src(Y)) < have: Y <= (have - 0.5) d - 0.5.
        if have >= self.src_h:
            stop = self.dst_h
        else:
            stop = min(self.dst_h, int(math.floor((have - 0.5) * self.d - 0.5)) + 1)
            while stop > self._next and math.ceil(self._src(np.float64(stop - 1))) >= have:
                stop -= 1  # floating-point edge
        while self._next < stop:
            n = min(self.chunk, stop - self._next)
            ys = np.arange(self._next, self._next + n)
            src = self._src(ys)
            r0 = np.floor(src).astype(np.int64)
            r1 = np.minimum(r0 + 1, self.src_h - 1)
            a = (src - r0).astype(np.float32)[:, None]
            b = self._buf
            rows_y = (1 - a) * b[r0 - self._buf_y0] + a * b[r1 - self._buf_y0]
            out = (1 - self._cw) * rows_y[:, self._c0] + self._cw * rows_y[:, self._c1]
            yield self._next, out
            self._next += n
        if self._next < self.dst_h:  # drop coarse rows no later level-0 row needs
            keep_from = int(math.floor(self._src(np.float64(self._next))))
            cut = max(0, keep_from - self._buf_y0)
            self._buf, self._buf_y0 = self._buf[cut:], self._buf_y0 + cut


def predict_rows_to_tiff(
    predictor: SlidingWindowPredictor,
    reader: Any,
    mask_path: str | Path,
    threshold: float = 0.5,
    prob_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: BandShards | None = None,
    *,
    out_shape: tuple[int, int] | None = None,
    downsample: float = 1.0,
    mpp: float | None = None,
    description: str | None = None,
) -> np.ndarray:
    """Predict ``reader`` band by band; write a pyramidal tiled zlib TIFF mask (0/255).

    ``reader`` has ``shape`` and ``read_rows`` (see :meth:`SlidingWindowPredictor.
    predict_rows`). With ``downsample`` != 1 it is ``downsample`` times coarser than the
    output, whose level-0 ``out_shape`` the probabilities are interpolated to. With
    ``prob_path`` a second TIFF holds uint8 probabilities (0..255). ``mpp`` goes into the
    resolution tags, ``description`` into the mask's ImageDescription. Returns the mask's
    coarsest level ``(h, w) uint8`` (the longer side at most :data:`PYRAMID_MIN_SIDE`).
    With ``shard`` (rank 0 under torchrun) the other ranks compute their groups of bands
    (:meth:`SlidingWindowPredictor.serve_rows`) and this rank blends and writes.
    """
    limit_heap_growth()
    shape = tuple(out_shape or reader.shape)
    resample = not math.isclose(downsample, 1.0) or shape != tuple(reader.shape)
    pyramid = _Pyramid(shape, binary=True)
    prob_pyramid = _Pyramid(shape, binary=False) if prob_path is not None else None
    sink = (_TiffTileSink(Path(prob_path), shape, prob_pyramid, mpp)
            if prob_path is not None else None)

    def level0_rows() -> Iterator[np.ndarray]:
        rows_in = predictor.predict_rows(reader, progress, shard)
        if not resample:
            for _, probs in rows_in:
                yield probs
            return
        up = _RowResampler(tuple(reader.shape), shape, downsample)
        for y, probs in rows_in:
            for _, rows in up.push(y, probs):
                yield rows

    def mask_tiles() -> Iterator[np.ndarray]:
        tiler = _RowTiler(shape[1])
        prob_tiler = _RowTiler(shape[1]) if sink is not None else None
        for probs in level0_rows():
            if sink is not None and prob_tiler is not None and prob_pyramid is not None:
                p8 = np.rint(probs * 255.0).astype(np.uint8)
                prob_pyramid.push(p8)
                for tile in prob_tiler.push(p8):
                    sink.put(tile)
            m8 = (probs > threshold).astype(np.uint8) * 255
            pyramid.push(m8)
            yield from tiler.push(m8)
        # The writer stops pulling after the last mask tile: finish the other file first.
        # (Each writer finishes its own pyramid; see _Pyramid.finish.)
        if sink is not None and prob_tiler is not None:
            for tile in prob_tiler.finish():
                sink.put(tile)
        yield from tiler.finish()

    try:
        try:
            _write_tiled_tiff(Path(mask_path), shape, mask_tiles(), pyramid, mpp, description)
        except BaseException:
            if sink is not None:  # its own error (too few tiles) would hide the real one
                with contextlib.suppress(BaseException):
                    sink.close()
            raise
        if sink is not None:
            sink.close()
        return pyramid.smallest
    finally:
        pyramid.close()
        if prob_pyramid is not None:
            prob_pyramid.close()


def predict_tiff_streamed(
    predictor: SlidingWindowPredictor,
    source: str | Path,
    mask_path: str | Path,
    threshold: float = 0.5,
    prob_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: BandShards | None = None,
) -> tuple[int, int]:
    """Predict a TIFF band by band at level 0; write the mask as :func:`predict_rows_to_tiff`.

    Returns the image's ``(H, W)``. Memory stays bounded by a few bands of the image
    width. Slides (any format, at the model's resolution, glass found on a thumbnail)
    go through :func:`stainadapt.inference.slides.predict_slide` instead.
    """
    with TiffReader(source) as reader:
        predict_rows_to_tiff(predictor, reader, mask_path, threshold, prob_path, progress, shard)
        return reader.shape
