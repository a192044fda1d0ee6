"""Gaussian-blended sliding-window prediction of images of any size.

The predictor cuts the image into ``tile x tile`` windows that overlap by ``overlap``
pixels (default a quarter of the tile), runs the model on batches of windows, and blends
the probabilities with a Gaussian weight (:mod:`.windows`). Images smaller than a tile
are padded (symmetric) and the output is cropped back: the output always has the input's
H x W.

Everything runs row band by row band (one row of windows at a time): a rolling
accumulator of ``tile`` rows holds the blended sums, and the rows no later window can
touch are handed out as soon as a band is done. The next band is read in a thread
while the model runs on this one. The in-memory path, the streamed path
for large TIFFs (:mod:`.streaming`) and whole-image evaluation (:mod:`.evaluate`) share
that code, so they give the same pixels.

Options: flip test-time augmentation (``tta``: identity, H, W and HW flips,
probabilities averaged), a fitted :class:`Normalizer` applied to each window on the
device, bf16 autocast (``amp="auto"`` means bf16 on CUDA, off on CPU) and channels_last
on CUDA; windows of background glass are skipped (``min_tissue``).

Model input: ``float32 (B, 3, T, T)`` in ``[0, 1]`` (the same scaling the trainer feeds
G); output: one logit channel, turned into probabilities with a sigmoid.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.resample import downsample_image, model_downsample, upsample_probs
from ..device import resolve_amp, resolve_device
from ..errors import InputError
from .heap import release_free_memory
from .sharding import BandShards
from .windows import gaussian_weight, window_starts, window_tissue_map

__all__ = ["ArrayRows", "SlidingWindowPredictor", "sliding_window_predict"]


class ArrayRows:
    """Row-band access to an in-memory ``(H, W, 3) uint8`` image (a predictor reader)."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        self.image = image
        self.shape = (int(image.shape[0]), int(image.shape[1]))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]



@dataclass
class _Stats:
    tiles_total: int = 0
    tiles_skipped: int = 0


class _ReadAhead:
    """``read(g)`` for each of ``order`` (group indices), one group ahead, in a thread.

    The next group's pixels are read and decoded while the model runs on this one
    (decoders, OpenSlide and Pillow release the GIL), so on a fast device reading hides
    behind the model instead of adding to it. One thread reads, in order: a reader is
    never used by two threads at once. At most two groups' pixels are held.
    """

    def __init__(self, read: Callable[[int], Any], order: list[int]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._read, self._order = read, list(order)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stainadapt-read")
        self._pending: dict[int, Any] = {}
        self._next = 0
        self._submit()

    def _submit(self) -> None:
        if self._next < len(self._order):
            g = self._order[self._next]
            self._pending[g] = self._pool.submit(self._read, g)
            self._next += 1

    def take(self, g: int) -> Any:
        """Group ``g``'s ``read(g)`` (the next in ``order``); starts reading the one after."""
        future = self._pending.pop(g)
        self._submit()
        return future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()


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

    def model_input(self, windows: torch.Tensor) -> torch.Tensor:
        """The model's input ``float32 (B, 3, T, T)`` in [0, 1] for uint8 windows (on device).

        The normaliser (if any), then the scaling: what every prediction, and the sample
        of test-time adaptation (:mod:`.adapt`), goes through.
        """
        if self.normalizer is not None:
            windows = self.normalizer(windows)
        x = windows.float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def predict_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, T, T) float32`` of uint8 windows ``(B, 3, T, T)`` (on device)."""
        x = self.model_input(windows)
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
    ) -> tuple[np.ndarray | None, list[bool]]:
        """The (padded) pixels under one group, and per window (row-major) "skip: glass".

        A reader with ``tissue_fraction(y, x, side)`` (a slide with a tissue map) decides
        which windows hold tissue; a group of glass only is then not read at all (the
        block is ``None``). Otherwise each window's pixels are tested
        (:func:`.windows.window_tissue_map`).
        """
        t = self.tile
        judge = getattr(reader, "tissue_fraction", None) if self.min_tissue > 0 else None
        judged: list[bool] | None = None
        if judge is not None:
            judged = [judge(y, x, t) < self.min_tissue for y in group for x in xs]
            if all(judged):
                return None, judged
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
        if judged is not None:
            return block, judged
        stride = 4 if t >= 64 else 1
        tissue = window_tissue_map(block, stride) if self.min_tissue > 0 else None
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
        self, block: np.ndarray | None, keep: list[tuple[int, int]], y_first: int
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """``(windows, probabilities)`` batch by batch for the kept windows of a group."""
        if not keep or block is None:
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
        own = [g for g in range(len(groups)) if shard is None or shard.owner(g) == shard.rank]
        reads = _ReadAhead(lambda g: self._read_group(reader, groups[g], xs, wp), own)
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
                    block, skipped = reads.take(g)
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
                release_free_memory()
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
        finally:
            reads.close()

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
        """Probabilities ``(H, W) float32`` of an ``(H, W, 3) uint8`` image.

        A model trained on coarser tiles (``model.downsample`` > 1) sees the image
        resampled the same way; its probabilities come back at ``(H, W)``.
        """
        d = model_downsample(self.model)
        reader = ArrayRows(downsample_image(image, d))
        out = np.empty(reader.shape, dtype=np.float32)
        for y, rows in self.predict_rows(reader, progress):
            out[y : y + rows.shape[0]] = rows
        return upsample_probs(out, image.shape[:2])


def sliding_window_predict(
    model: nn.Module, image: np.ndarray, tile: int, overlap: int | None = None, **kwargs: Any
) -> np.ndarray:
    """One-call form of :class:`SlidingWindowPredictor`: probabilities ``(H, W)``."""
    return SlidingWindowPredictor(model, tile, overlap, **kwargs).predict(image)
