"""Sliding-window prediction: images of any size, folders, and slides larger than memory.

The predictor cuts the image into ``tile x tile`` windows that overlap by ``overlap``
pixels (default a quarter of the tile), runs the model on batches of windows, and blends
the probabilities with a Gaussian weight (sigma = tile / 8, as nnU-Net does; zeros of the
weight are replaced by its smallest positive value so nothing divides by zero). Window
starts are spread evenly, so the actual overlap is at least the requested one and the
last window ends on the image border. Images smaller than a tile are padded
(symmetric) and the output is cropped back: the output always has the input's H x W.

Everything runs row band by row band (one row of windows at a time): a rolling
accumulator of ``tile`` rows holds the blended sums, and the rows no later window can
touch are handed out as soon as a band is done. The in-memory path and the streamed
path for large TIFFs share that code, so both give the same pixels.

* **Streaming** (:func:`predict_tiff_streamed`): a TIFF at least ``stream_min_pixels``
  large (tiled or striped, BigTIFF, pyramidal: level 0) is read segment by segment with
  tifffile (only the tiles/strips under the current band are decoded), and the mask is
  written as a tiled (256 x 256), zlib-compressed TIFF through
  ``TiffWriter.write(data=<tile generator>)``. Working memory is a few bands of the
  slide's width, whatever its height.
* **Background glass** is skipped: a window whose fraction of pixels with optical density
  ``OD_R + OD_G + OD_B > 0.15`` is below ``min_tissue`` is not run through the model;
  it contributes probability 0 (with its weight), and is counted in ``tiles_skipped``.
* Options: flip test-time augmentation (``tta``: identity, H, W and HW flips, probabilities
  averaged), a fitted :class:`Normalizer` applied to each window on the device, bf16
  autocast (``amp="auto"`` means bf16 on CUDA, off on CPU) and channels_last on CUDA.

Model input: ``float32 (B, 3, T, T)`` in ``[0, 1]`` (the same scaling the trainer feeds
G); output: one logit channel, turned into probabilities with a sigmoid.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .device import resolve_device
from .errors import InputError, RunFailure

__all__ = [
    "STREAM_MIN_PIXELS",
    "OUTPUT_TILE",
    "PredictReport",
    "SlidingWindowPredictor",
    "TiffBandReader",
    "collect_inputs",
    "gaussian_weight",
    "predict_paths",
    "predict_tiff_streamed",
    "resolve_amp",
    "resolve_device",
    "sliding_window_predict",
    "tissue_fraction",
    "window_starts",
]

#: TIFF inputs with at least this many pixels are streamed instead of read whole.
STREAM_MIN_PIXELS = 4096 * 4096
#: Tile side of the TIFF masks written by the streamed path.
OUTPUT_TILE = 256
#: Optical-density sum above which a pixel counts as tissue.
TISSUE_OD = 0.15

# OD of one 8-bit channel value: -log10((v + 1) / 256); a lookup table keeps it cheap.
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)


# --------------------------------------------------------------------------- geometry


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window start positions along one axis: evenly spread, first 0, last ``length - tile``.

    With ``length <= tile`` there is one window at 0 (the image is padded to ``tile``).
    The step between starts is at most ``tile - overlap``.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def gaussian_weight(tile: int, sigma_scale: float = 1.0 / 8.0) -> torch.Tensor:
    """``(tile, tile)`` float32 Gaussian, peak 1, sigma ``tile * sigma_scale``, no zeros."""
    centre = (tile - 1) / 2.0
    sigma = tile * sigma_scale
    x = torch.arange(tile, dtype=torch.float64)
    g = torch.exp(-((x - centre) ** 2) / (2.0 * sigma * sigma))
    w = torch.outer(g, g)
    w = w / w.max()
    w = w.to(torch.float32)
    positive = w[w > 0]
    w[w == 0] = positive.min()
    return w


def tissue_fraction(tile: np.ndarray, stride: int = 4) -> float:
    """Fraction of pixels (subsampled by ``stride``) whose OD sum exceeds 0.15.

    ``tile``: ``(H, W, 3) uint8``. Bright glass has OD near 0; stained tissue well above.
    """
    sub = tile[::stride, ::stride]
    od = _OD_LUT[sub[..., 0]] + _OD_LUT[sub[..., 1]] + _OD_LUT[sub[..., 2]]
    return float((od > TISSUE_OD).mean()) if od.size else 0.0


def _tissue_map(band: np.ndarray, stride: int) -> np.ndarray:
    sub = band[::stride, ::stride]
    return (_OD_LUT[sub[..., 0]] + _OD_LUT[sub[..., 1]] + _OD_LUT[sub[..., 2]]) > TISSUE_OD


# --------------------------------------------------------------------------- devices


def resolve_amp(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` -> bf16 on CUDA, none on CPU; ``bf16``; ``off``."""
    if amp is True:
        amp = "bf16"
    if amp in (False, None, "off", "no", "none", "fp32"):
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        return torch.float16
    raise InputError(f"--amp {amp!r}: choose auto, bf16, fp16 or off")


# --------------------------------------------------------------------------- readers


class ArrayRows:
    """Row-band access to an in-memory ``(H, W, 3) uint8`` image."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        self.image = image
        self.shape = (int(image.shape[0]), int(image.shape[1]))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]


class TiffBandReader:
    """Reads full-width row bands of a TIFF's level 0 by decoding only the segments needed.

    Works for tiled and striped pages, classic and BigTIFF, contiguous or planar samples,
    any compression tifffile/imagecodecs decode. Decoded segment rows are cached until
    the reading position moves past them (bands overlap), so each segment is decoded
    about once. Returns ``(rows, W, 3) uint8`` (``data.io.to_rgb8`` conversion rule).
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            if not self._tif.series:
                raise ValueError("no image data in TIFF")
            series = self._tif.series[0]
            level = (getattr(series, "levels", None) or [series])[0]
            page = level.keyframe if hasattr(level, "keyframe") else level.pages[0]
            if page is None:
                raise ValueError("no image page in TIFF")
            self._page = page
            self.shape = (int(page.imagelength), int(page.imagewidth))
            self._samples = int(page.samplesperpixel)
            self._separate = int(page.planarconfig) == 2 and self._samples > 1
            if int(getattr(page, "imagedepth", 1) or 1) != 1:
                raise ValueError("volumetric TIFF (ImageDepth > 1) is not supported")
            self._decode = page.decode
            self._decodeargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
            if page.compression in {6, 7, 34892, 33007}:  # JPEG flavours
                self._decodeargs["jpegtables"] = page.jpegtables
                self._decodeargs["jpegheader"] = page.jpegheader
            # Where each segment lies: segment rows keyed by their first image row.
            self._rows: dict[int, list[int]] = {}
            self._row_height: dict[int, int] = {}
            for index in range(len(page.dataoffsets)):
                _, (_s, _d, y, _x, _c), shp = self._decode(None, index, _fullsize=False)
                self._rows.setdefault(int(y), []).append(index)
                self._row_height[int(y)] = int(shp[1])
            self._row_starts = sorted(self._rows)
        except Exception:
            self._tif.close()
            raise
        self._cache: dict[int, np.ndarray] = {}

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()

    def __enter__(self) -> TiffBandReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment_row(self, y: int) -> np.ndarray:
        """The decoded full-width segment row starting at image row ``y``: (h, W, S)."""
        cached = self._cache.get(y)
        if cached is not None:
            return cached
        page = self._page
        h = self._row_height[y]
        width = self.shape[1]
        out: np.ndarray | None = None
        fh = self._tif.filehandle
        for index in self._rows[y]:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            data = None
            if count > 0 and offset > 0:
                with fh.lock:
                    fh.seek(offset)
                    data = fh.read(count)
            seg, (s, _d, _y, x, _c), shp = self._decode(data, index, **self._decodeargs)
            if out is None:
                dtype = seg.dtype if seg is not None else page.dtype
                out = np.zeros((h, width, self._samples), dtype=dtype)
            if seg is None:
                continue
            seg = seg[0, :h, : width - x]  # (h, w, contig samples)
            if self._separate:
                out[:, x : x + seg.shape[1], s] = seg[..., 0]
            else:
                out[:, x : x + seg.shape[1], :] = seg
        assert out is not None
        self._cache[y] = out
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        from .data.io import to_rgb8

        for key in [k for k in self._cache if k + self._row_height[k] <= y0]:
            del self._cache[key]
        parts = []
        for start in self._row_starts:
            end = start + self._row_height[start]
            if end <= y0 or start >= y1:
                continue
            seg = self._segment_row(start)
            parts.append(seg[max(y0, start) - start : min(y1, end) - start])
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return to_rgb8(raw)


# --------------------------------------------------------------------------- sharding


class BandShards:
    """One large image split across the ranks of a torchrun job, group of bands by group.

    Group ``g`` (see :meth:`SlidingWindowPredictor._layout`) is computed by rank
    ``g % world``; every other rank sends each of its groups' results to rank 0 as
    ``[status, n_kept]`` (int64), the skip flags of the group's windows (int64) and the
    kept windows' probabilities ``(n_kept, T, T)`` (float32), in group order. Rank 0 blends
    them in the one-process order, so the mask is byte-identical to a one-process run.
    A rank that fails sends ``status = 1`` for each remaining group of its own: rank 0
    always receives exactly one message per remote group, and nobody waits forever.
    Tensors travel on the CPU with gloo and on the device with NCCL.
    """

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        import torch.distributed as dist

        self.rank, self.world = rank, world
        self.comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self._received: set[int] = set()

    def owner(self, group: int) -> int:
        return group % self.world

    def send(self, skipped: list[bool], probs: torch.Tensor | None) -> None:
        import torch.distributed as dist

        n = 0 if probs is None else int(probs.shape[0])
        dist.send(torch.tensor([0, n], dtype=torch.int64, device=self.comm), dst=0)
        dist.send(torch.tensor(skipped, dtype=torch.int64, device=self.comm), dst=0)
        if probs is not None and n:
            dist.send(probs.float().contiguous().to(self.comm), dst=0)

    def send_failure(self) -> None:
        import torch.distributed as dist

        dist.send(torch.tensor([1, 0], dtype=torch.int64, device=self.comm), dst=0)

    def receive(self, group: int, n_windows: int, tile: int) -> tuple[list[bool], torch.Tensor]:
        """Rank 0: the skip flags and kept probabilities of a group another rank owns."""
        import torch.distributed as dist

        src = self.owner(group)
        head = torch.zeros(2, dtype=torch.int64, device=self.comm)
        dist.recv(head, src=src)
        if int(head[0]) != 0:
            self._received.add(group)
            raise RuntimeError(f"rank {src} could not predict its share of the image")
        flags = torch.zeros(n_windows, dtype=torch.int64, device=self.comm)
        dist.recv(flags, src=src)
        n = int(head[1])
        probs = torch.zeros(n, tile, tile, dtype=torch.float32, device=self.comm)
        if n:
            dist.recv(probs, src=src)
        self._received.add(group)
        return [bool(f) for f in flags.tolist()], probs

    def drain(self, sizes: list[int], tile: int) -> None:
        """Rank 0: receive (and drop) every remote group not received yet.

        ``sizes``: the number of windows of each group. Called when rank 0 stops early,
        so the other ranks' sends complete and the next file starts in step.
        """
        for g, n_windows in enumerate(sizes):
            if self.owner(g) == 0 or g in self._received:
                continue
            with contextlib.suppress(RuntimeError):  # a failure message: nothing to drop
                self.receive(g, n_windows, tile)


# --------------------------------------------------------------------------- predictor


@dataclass
class _Stats:
    tiles_total: int = 0
    tiles_skipped: int = 0


class SlidingWindowPredictor:
    """Gaussian-blended sliding-window inference for a one-logit segmentation model.

    Args:
        model: ``nn.Module``; ``model(x)`` with ``x`` float ``(B, 3, T, T)`` in [0, 1]
            returns logits ``(B, 1, T, T)``.
        tile: window side ``T`` (a multiple of the model's ``max_stride``, default 32).
        overlap: pixels shared by neighbouring windows; default ``tile // 4``.
        batch_size: windows per forward pass.
        device: where the model and the blending run.
        amp: ``"auto"`` (bf16 on CUDA), ``"bf16"``, ``"off"``.
        tta: average the probabilities of the four flips.
        normalizer: fitted ``Normalizer`` module (uint8 in, uint8 out) applied per window.
        min_tissue: windows with a smaller tissue fraction are skipped (0 disables).
        progress: ``progress(done_tiles, total_tiles)`` after each band.

    ``predict(image)`` returns probabilities ``(H, W) float32``; ``predict_rows(reader)``
    yields ``(y, rows)`` pieces in order, for streaming.
    """

    def __init__(
        self,
        model: nn.Module,
        tile: int,
        overlap: int | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        amp: str | bool | None = "auto",
        tta: bool = False,
        normalizer: nn.Module | None = None,
        min_tissue: float = 0.01,
        sigma_scale: float = 1.0 / 8.0,
    ) -> None:
        tile = int(tile)
        multiple = int(getattr(model, "max_stride", 32) or 1)
        if tile <= 0 or tile % multiple:
            raise InputError(
                f"--tile {tile}: must be a positive multiple of {multiple} "
                f"(try {max(multiple, round(tile / multiple) * multiple)})"
            )
        overlap = tile // 4 if overlap is None else int(overlap)
        if not 0 <= overlap < tile:
            raise InputError(f"--overlap {overlap}: must be at least 0 and below the tile ({tile})")
        if batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be at least 1")
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_amp(amp, self.device)
        self.tile, self.overlap, self.batch_size = tile, overlap, int(batch_size)
        self.tta = bool(tta)
        self.min_tissue = float(min_tissue or 0.0)
        self.channels_last = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalizer = normalizer.to(self.device) if normalizer is not None else None
        self.weight = gaussian_weight(tile, sigma_scale).to(self.device)
        self.stats = _Stats()

    # -- one batch of windows -------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(x)
        if isinstance(out, tuple):
            out = out[0]
        return out[:, 0].float()

    @torch.inference_mode()
    def predict_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, T, T) float32`` of uint8 windows ``(B, 3, T, T)`` (on device)."""
        if self.normalizer is not None:
            windows = self.normalizer(windows)
        x = windows.float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.tta:
            return torch.sigmoid(self._forward(x))
        prob = torch.zeros(x.shape[0], x.shape[2], x.shape[3], device=x.device)
        for dims in ((), (2,), (3,), (2, 3)):
            xi = torch.flip(x, dims) if dims else x
            p = torch.sigmoid(self._forward(xi))
            prob += torch.flip(p, [d - 1 for d in dims]) if dims else p
        return prob / 4.0

    # -- whole image, band by band ---------------------------------------------------

    def count_windows(self, height: int, width: int) -> int:
        t, o = self.tile, self.overlap
        return len(window_starts(height, t, o)) * len(window_starts(width, t, o))

    def _layout(self, height: int, width: int) -> tuple[int, int, list[int], list[list[int]]]:
        """``(padded H, padded W, window x starts, groups of window y starts)``.

        A group is the rows of windows run in one pass: one band when a band fills a
        batch, else enough narrow bands to fill whole batches (a 5-window band with
        batch 8 goes 8 bands at a time).
        """
        t = self.tile
        hp, wp = max(height, t), max(width, t)
        ys = window_starts(hp, t, self.overlap)
        xs = window_starts(wp, t, self.overlap)
        k = (
            1
            if len(xs) >= self.batch_size
            else self.batch_size // math.gcd(len(xs), self.batch_size)
        )
        return hp, wp, xs, [ys[i : i + k] for i in range(0, len(ys), k)]

    def group_sizes(self, shape: tuple[int, int]) -> list[int]:
        """Windows per group of an image of ``shape`` (what each sharded message carries)."""
        _, _, xs, groups = self._layout(*shape)
        return [len(g) * len(xs) for g in groups]

    def _read_group(
        self, reader: Any, group: list[int], xs: list[int], wp: int
    ) -> tuple[np.ndarray, list[bool]]:
        """The (padded) pixels under one group, and per window (row-major) "skip: glass"."""
        t = self.tile
        height = reader.shape[0]
        y_first, y_last = group[0], group[-1]
        block = reader.read_rows(y_first, min(y_last + t, height))
        rows = y_last + t - y_first
        if block.shape[0] < rows or block.shape[1] < wp:
            block = np.pad(
                block,
                ((0, rows - block.shape[0]), (0, wp - block.shape[1]), (0, 0)),
                mode="symmetric",
            )
        stride = 4 if t >= 64 else 1
        tissue = _tissue_map(block, stride) if self.min_tissue > 0 else None
        skipped = []
        for y in group:
            for x in xs:
                skip = False
                if tissue is not None:
                    ty = (y - y_first) // stride
                    patch = tissue[ty : ty + t // stride, x // stride : (x + t) // stride]
                    skip = float(patch.mean()) < self.min_tissue
                skipped.append(skip)
        return block, skipped

    def _group_probs(
        self, block: np.ndarray, keep: list[tuple[int, int]], y_first: int
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """``(windows, probabilities)`` batch by batch for the kept windows of a group."""
        if not keep:
            return
        t = self.tile
        block_t = torch.from_numpy(np.require(block, requirements=["C", "W"]))
        block_t = block_t.to(self.device).permute(2, 0, 1)  # (3, rows, Wp)
        for b in range(0, len(keep), self.batch_size):
            chunk = keep[b : b + self.batch_size]
            windows = torch.stack(
                [block_t[:, y - y_first : y - y_first + t, x : x + t] for y, x in chunk]
            )
            yield chunk, self.predict_windows(windows)

    @torch.inference_mode()
    def predict_rows(
        self,
        reader: Any,
        progress: Callable[[int, int], None] | None = None,
        shard: BandShards | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y, probs (r, W) float32)`` row pieces covering the image top to bottom.

        ``reader`` has ``shape = (H, W)`` and ``read_rows(y0, y1) -> (r, W, 3) uint8``.
        With ``shard`` (rank 0 of a torchrun job) the groups other ranks own are received
        from them (:meth:`serve_rows`) instead of computed; they are blended here in the
        same order and arithmetic as locally, so the output is the one-process output.
        """
        height, width = reader.shape
        t, dev = self.tile, self.device
        hp, wp, xs, groups = self._layout(height, width)
        total = sum(len(g) for g in groups) * len(xs)
        acc = torch.zeros(0, wp, device=dev)
        wsum = torch.zeros(0, wp, device=dev)
        acc_y0 = 0  # image row of acc[0]
        done = 0
        try:
            for g, group in enumerate(groups):
                y_first, y_last = group[0], group[-1]
                need = y_last + t - acc_y0
                if acc.shape[0] < need:
                    grow = torch.zeros(need - acc.shape[0], wp, device=dev)
                    acc, wsum = torch.cat([acc, grow]), torch.cat([wsum, grow])
                windows = [(y, x) for y in group for x in xs]
                chunks: Iterable[tuple[list[tuple[int, int]], torch.Tensor]]
                if shard is None or shard.owner(g) == shard.rank:
                    block, skipped = self._read_group(reader, group, xs, wp)
                    keep = [w for w, s in zip(windows, skipped, strict=True) if not s]
                    chunks = self._group_probs(block, keep, y_first)
                else:
                    skipped, probs = shard.receive(g, len(windows), t)
                    keep = [w for w, s in zip(windows, skipped, strict=True) if not s]
                    chunks = [(keep, probs.to(dev))] if keep else []
                for (y, x), skip in zip(windows, skipped, strict=True):
                    if skip:
                        wsum[y - acc_y0 : y - acc_y0 + t, x : x + t] += self.weight
                        self.stats.tiles_skipped += 1
                for chunk, probs in chunks:
                    for (y, x), p in zip(chunk, probs, strict=True):
                        acc[y - acc_y0 : y - acc_y0 + t, x : x + t] += p * self.weight
                        wsum[y - acc_y0 : y - acc_y0 + t, x : x + t] += self.weight
                self.stats.tiles_total += len(windows)
                done += len(windows)
                if progress is not None:
                    progress(done, total)
                # Rows above the next pass's first window are final.
                last = g == len(groups) - 1
                next_start = hp if last else groups[g + 1][0]
                n_final = min(next_start, height) - acc_y0
                if n_final > 0:
                    yield acc_y0, (acc[:n_final, :width] / wsum[:n_final, :width]).cpu().numpy()
                if not last:
                    acc, wsum = acc[next_start - acc_y0 :], wsum[next_start - acc_y0 :]
                    acc_y0 = next_start
        except (Exception, GeneratorExit):
            # stopped early (an error, or the writer closed us): receive what the other
            # ranks still send, so they finish and the next file starts in step. Not on
            # Ctrl-C: peers may be gone, and torchrun stops everyone anyway.
            if shard is not None:
                shard.drain([len(g) * len(xs) for g in groups], t)
            raise

    @torch.inference_mode()
    def serve_rows(self, reader: Any, shape: tuple[int, int], shard: BandShards) -> None:
        """Compute this rank's groups of an image and send them to rank 0 (no output).

        The counterpart of :meth:`predict_rows` with ``shard`` on rank 0. ``reader`` may
        be ``None`` (the file did not open here): every group is then reported as failed,
        so rank 0 does not wait for data that will never come. Raises the first error
        after all this rank's groups were answered.
        """
        _, wp, xs, groups = self._layout(*shape)
        error: BaseException | None = None
        if reader is None:
            error = RuntimeError("the input could not be opened on this rank")
        for g, group in enumerate(groups):
            if shard.owner(g) != shard.rank:
                continue
            if error is not None:
                shard.send_failure()
                continue
            try:
                block, skipped = self._read_group(reader, group, xs, wp)
                windows = [(y, x) for y in group for x in xs]
                keep = [w for w, s in zip(windows, skipped, strict=True) if not s]
                parts = [p for _, p in self._group_probs(block, keep, group[0])]
                probs = torch.cat(parts) if parts else None
            except Exception as exc:  # reported to rank 0, then raised here
                error = exc
                shard.send_failure()
                continue
            shard.send(skipped, probs)
        if error is not None:
            raise error

    def predict(
        self, image: np.ndarray, progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Probabilities ``(H, W) float32`` of an ``(H, W, 3) uint8`` image."""
        reader = ArrayRows(image)
        out = np.empty(reader.shape, dtype=np.float32)
        for y, rows in self.predict_rows(reader, progress):
            out[y : y + rows.shape[0]] = rows
        return out


def sliding_window_predict(
    model: nn.Module, image: np.ndarray, tile: int, overlap: int | None = None, **kwargs: Any
) -> np.ndarray:
    """One-call form of :class:`SlidingWindowPredictor`: probabilities ``(H, W)``."""
    return SlidingWindowPredictor(model, tile, overlap, **kwargs).predict(image)


# --------------------------------------------------------------------------- streaming


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

    from .atomic import atomic_save

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
    with TiffBandReader(source) as reader:
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


# --------------------------------------------------------------------------- folders


@dataclass
class PredictReport:
    """What :func:`predict_paths` did: outputs, skipped existing ones, failures, tiles."""

    written: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    tiles_total: int = 0
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> None:
        """Raise :class:`RunFailure` listing the inputs that could not be predicted."""
        if self.failed:
            n = len(self.failed) + len(self.written) + len(self.existing)
            lines = "\n".join(f"  {p}: {why}" for p, why in self.failed)
            raise RunFailure(f"{len(self.failed)} of {n} inputs could not be predicted:\n{lines}")


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, plus the image files (by suffix, sorted, not hidden) of folders."""
    from .data.io import IMAGE_EXTS

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
                )
            )
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not files:
        raise InputError(
            f"no images in {', '.join(str(i) for i in inputs)} (looked for {', '.join(IMAGE_EXTS)})"
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


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a background 4-neighbour (a 1-pixel inner outline)."""
    m = np.pad(mask, 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def overlay_image(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """``(H, W, 3) uint8`` copy of ``image`` with the mask outline drawn (2 px) in ``colour``."""
    edge = _outline(mask)
    edge = edge | np.pad(edge, ((1, 0), (1, 0)))[:-1, :-1]
    out = image.copy()
    out[edge] = colour
    return out


def _load_normalizer(spec: str | None, reference: str | Path | None, meta: dict[str, Any]):
    from .runs import normalizer_from_meta

    if spec is None:
        if reference is not None:
            raise InputError("--reference needs --normalize SPEC (e.g. --normalize macenko)")
        return normalizer_from_meta(meta.get("normalizer"))
    if reference is None:
        raise InputError(f"--normalize {spec} needs --reference IMAGE to fit the stain to")
    from .data.io import read_image
    from .registry import create

    return create("normalizers", spec).fit(read_image(reference))


def predict_paths(
    inputs: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    threshold: float | None = None,
    probabilities: bool = False,
    overlay: bool = False,
    normalize: str | None = None,
    reference: str | Path | None = None,
    tta: bool = False,
    device: str = "auto",
    amp: str = "auto",
    overwrite: bool = False,
    min_tissue: float = 0.01,
    stream_min_pixels: int = STREAM_MIN_PIXELS,
    progress: Callable[[Path, int, int], None] | None = None,
) -> PredictReport:
    """Predict every input file (or image in an input folder) with the model of a run folder.

    Writes ``OUT/<stem>.png`` (0/255) for PNG/JPEG inputs and ``OUT/<stem>.tif`` for
    TIFF inputs; with ``probabilities`` also ``OUT/probabilities/<stem>.<ext>`` (uint8,
    probability x 255); with ``overlay`` ``OUT/overlays/<stem>.png`` (not for streamed
    slides). Outputs that exist are kept unless ``overwrite``, so a rerun resumes.
    A file that fails is recorded in the report and the others go on; call
    :meth:`PredictReport.raise_for_failures` afterwards. ``progress(path, done, total)``
    is called after each row of windows.
    """
    from . import distributed

    files = collect_inputs(inputs)
    dev = distributed.local_device(resolve_device(device))
    with distributed.session(dev):
        report = _predict_files(
            files, model, Path(out), dev, tile=tile, overlap=overlap, batch_size=batch_size,
            threshold=threshold, probabilities=probabilities, overlay=overlay,
            normalize=normalize, reference=reference, tta=tta, amp=amp, overwrite=overwrite,
            min_tissue=min_tissue, stream_min_pixels=stream_min_pixels, progress=progress,
        )  # fmt: skip
        if distributed.is_active():  # every rank returns the whole job's report
            report = _merge_reports(distributed.all_gather_objects(report), files)
    return report


def _predict_files(
    files: list[Path],
    model: str | Path,
    out: Path,
    dev: torch.device,
    *,
    tile: int | None,
    overlap: int | None,
    batch_size: int,
    threshold: float | None,
    probabilities: bool,
    overlay: bool,
    normalize: str | None,
    reference: str | Path | None,
    tta: bool,
    amp: str,
    overwrite: bool,
    min_tissue: float,
    stream_min_pixels: int,
    progress: Callable[[Path, int, int], None] | None,
) -> PredictReport:
    """The loop of :func:`predict_paths`, for this rank's share under torchrun.

    Files below ``stream_min_pixels`` go to rank ``index % world``; a streamed slide is
    shared by every rank (:class:`BandShards`) and written by rank 0. In one process
    (world 1) every file is this process's, as before.
    """
    from . import distributed
    from .data.io import image_shape, read_image, write_image
    from .runs import load_model

    world, rank = distributed.world_size(), distributed.rank() if distributed.is_active() else 0
    net, meta = load_model(model, device=dev)
    tile = int(tile or meta.get("image_size") or 256)
    if threshold is None:
        threshold = float(meta.get("threshold", 0.5) if meta.get("threshold") is not None else 0.5)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold}: must be between 0 and 1")
    normalizer = _load_normalizer(normalize, reference, meta)
    predictor = SlidingWindowPredictor(
        net, tile, overlap, batch_size=batch_size, device=dev, amp=amp, tta=tta,
        normalizer=normalizer, min_tissue=min_tissue,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport()
    for index, path in enumerate(files):
        suffix = ".tif" if _is_tiff(path) else ".png"
        mask_path = out / f"{path.stem}{suffix}"
        prob_path = out / "probabilities" / f"{path.stem}{suffix}" if probabilities else None
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
        streamed = shape is not None and shape[0] * shape[1] >= stream_min_pixels
        shared = world > 1 and streamed
        if world > 1 and not shared and index % world != rank:
            continue  # another rank's file
        done_already = not overwrite and all(p.exists() for p in wanted)
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
            if shared and rank != 0:
                assert shape is not None
                _serve_streamed(predictor, path, shape, BandShards(rank, world, dev))
                continue
            if streamed:
                if prob_path is not None:
                    prob_path.parent.mkdir(parents=True, exist_ok=True)
                shard = BandShards(rank, world, dev) if shared else None
                try:
                    predict_tiff_streamed(predictor, path, mask_path, threshold, prob_path,
                                          step, shard)
                except Exception:
                    if shard is not None and shape is not None:  # e.g. it did not open here
                        shard.drain(predictor.group_sizes(shape), predictor.tile)
                    raise
                if overlay:
                    report.notes.append(f"{path.name}: no overlay for a streamed slide")
            else:
                image = read_image(path)
                prob = predictor.predict(image, step)
                mask = prob > threshold
                if prob_path is not None:
                    write_image(prob_path, np.rint(prob * 255.0).astype(np.uint8))
                if overlay:
                    write_image(out / "overlays" / f"{path.stem}.png", overlay_image(image, mask))
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
    return report


def _serve_streamed(predictor: SlidingWindowPredictor, path: Path, shape: tuple[int, int],
                    shard: BandShards) -> None:
    """A non-zero rank's part of a shared slide: compute its bands, send them to rank 0."""
    try:
        reader = TiffBandReader(path)
    except Exception:
        with contextlib.suppress(RuntimeError):  # answer every group "failed"
            predictor.serve_rows(None, shape, shard)
        raise  # the open error itself is this rank's reason
    with reader:
        predictor.serve_rows(reader, reader.shape, shard)


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
    merged.notes = [n for r in parts for n in r.notes]
    return merged
