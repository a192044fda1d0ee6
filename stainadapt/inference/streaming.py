"""Slides larger than memory: read band by band, written as a tiled TIFF tile by tile.

A TIFF at least ``stream_min_pixels`` large (tiled or striped, BigTIFF, pyramidal: level
0) is read segment by segment (:class:`stainadapt.data.tiff.TiffReader`: only the
tiles/strips under the current band are decoded), and the mask is written as a tiled
(:data:`OUTPUT_TILE` square), zlib-compressed TIFF through
``TiffWriter.write(data=<tile generator>)``. Working memory is a few bands of the
slide's width, whatever its height.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_save
from ..data.tiff import TiffReader
from .predictor import SlidingWindowPredictor
from .sharding import BandShards

__all__ = ["OUTPUT_TILE", "predict_tiff_streamed"]

#: Tile side of the TIFF masks written by the streamed path.
OUTPUT_TILE = 256


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


class _TiffTileSink:
    """Writes a tiled TIFF from tiles pushed by another thread (for the second output)."""

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
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
                _write_tiled_tiff(path, shape, tiles())
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


def _write_tiled_tiff(path: Path, shape: tuple[int, int], tiles: Iterable[np.ndarray]) -> None:
    """Write ``tiles`` (row-major, OUTPUT_TILE square, uint8) as a zlib tiled TIFF, atomically."""
    import tifffile

    height, width = shape

    def writer(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=height * width >= 2**31) as tw:
            tw.write(
                data=iter(tiles),
                shape=(height, width),
                dtype=np.uint8,
                tile=(OUTPUT_TILE, OUTPUT_TILE),
                compression="zlib",
                photometric="minisblack",
            )

    atomic_save(path, writer)


def predict_tiff_streamed(
    predictor: SlidingWindowPredictor,
    source: str | Path,
    mask_path: str | Path,
    threshold: float = 0.5,
    prob_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    shard: BandShards | None = None,
) -> tuple[int, int]:
    """Predict a TIFF band by band; write a tiled zlib TIFF mask (0/255), tile by tile.

    With ``prob_path`` a second TIFF holds uint8 probabilities (0..255). Returns the
    image's ``(H, W)``. Memory stays bounded by a few bands of the image width.
    With ``shard`` (rank 0 under torchrun) the other ranks compute their groups of bands
    (:meth:`SlidingWindowPredictor.serve_rows`) and this rank blends and writes.
    """
    with TiffReader(source) as reader:
        shape = reader.shape
        sink = _TiffTileSink(Path(prob_path), shape) if prob_path is not None else None

        def mask_tiles() -> Iterator[np.ndarray]:
            tiler = _RowTiler(shape[1])
            prob_tiler = _RowTiler(shape[1]) if sink is not None else None
            for _, probs in predictor.predict_rows(reader, progress, shard):
                if sink is not None and prob_tiler is not None:
                    for tile in prob_tiler.push(np.rint(probs * 255.0).astype(np.uint8)):
                        sink.put(tile)
                yield from tiler.push((probs > threshold).astype(np.uint8) * 255)
            # The writer stops pulling after the last mask tile: finish the other file first.
            if sink is not None and prob_tiler is not None:
                for tile in prob_tiler.finish():
                    sink.put(tile)
            yield from tiler.finish()

        try:
            _write_tiled_tiff(Path(mask_path), shape, mask_tiles())
        except BaseException:
            if sink is not None:  # its own error (too few tiles) would hide the real one
                with contextlib.suppress(BaseException):
                    sink.close()
            raise
        if sink is not None:
            sink.close()
    return shape
