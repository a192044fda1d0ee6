"""Image and mask readers/writers: one conversion rule for every format.

Everything an image reader returns is ``(H, W, 3) uint8`` RGB:

* TIFF (``.tif``/``.tiff``, classic or BigTIFF, striped or tiled, any compression
  imagecodecs can decode) is read with tifffile; for pyramidal files only level 0
  (full resolution) of the first series is read.
* PNG/JPEG are read with Pillow.
* Conversion rule (``to_rgb8``): ``uint8`` is kept; ``uint16`` is shifted right by 8
  bits (``v >> 8``, i.e. the full 16-bit range maps onto 0..255); other integer types
  are scaled from their full dtype range; ``bool`` becomes 0/255; floats are taken as
  0..1 when their maximum is at most 1 (times 255), otherwise clipped to 0..255.
  Grey images are replicated into three channels, grey+alpha keeps the grey channel,
  RGBA drops alpha (it is not composited), more than 4 channels is an error.

Every failure is an :class:`~stainadapt.errors.InputError` whose message starts with
the path.

Decompression bombs: a header claiming more than the pixel limit is refused before any
pixel buffer is allocated. The limit is one process-wide setting (:func:`pixel_limit`,
:func:`set_pixel_limit`) so every reader -- training crops, validation, prediction,
normalisation, evaluation -- obeys the same value without threading an argument through
every call. It starts from the ``STAINADAPT_MAX_PIXELS`` environment variable (default
:data:`DEFAULT_MAX_PIXELS`); ``stainadapt --max-pixels N COMMAND`` sets both, so
data-loader worker processes started later inherit it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTS",
    "MAX_PIXELS_ENV",
    "MASK_EXTS",
    "check_intact",
    "check_pixels",
    "image_shape",
    "pixel_limit",
    "read_image",
    "read_mask",
    "read_mask_values",
    "set_pixel_limit",
    "to_rgb8",
    "write_image",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTS = (".png", ".tif", ".tiff")
TIFF_EXTS = (".tif", ".tiff")
_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Images whose header claims more pixels than this are refused before decoding.
DEFAULT_MAX_PIXELS = 2**31
#: Environment variable holding the process-wide limit (an integer; 0 means no limit).
MAX_PIXELS_ENV = "STAINADAPT_MAX_PIXELS"
#: What to tell the user to do when the limit refuses a file.
_RAISE_HINT = f"raise the limit with stainadapt --max-pixels N (or {MAX_PIXELS_ENV}=N)"


def _parse_limit(value: str | int, where: str) -> int:
    try:
        limit = int(str(value).strip().replace("_", ""))
    except ValueError:
        raise InputError(f"{where}: {value!r} is not a whole number of pixels") from None
    if limit < 0:
        raise InputError(f"{where}: {limit} must be at least 0 (0: no limit)")
    return limit


def pixel_limit() -> int:
    """The current pixel limit (0: none): ``STAINADAPT_MAX_PIXELS`` or the default.

    Read from the environment on every call so that a limit set by the CLI (or by a
    test) reaches worker processes and is never stale.
    """
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or not value.strip():
        return DEFAULT_MAX_PIXELS
    return _parse_limit(value, MAX_PIXELS_ENV)


def set_pixel_limit(limit: int | None) -> None:
    """Set the process-wide pixel limit (``None``: back to the default; 0: no limit)."""
    if limit is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
        return
    os.environ[MAX_PIXELS_ENV] = str(_parse_limit(limit, "--max-pixels"))


def _err(path: Path | str, reason: str) -> InputError:
    return InputError(f"{path}: {reason}")


def _check_file(path: Path, exts: tuple[str, ...]) -> None:
    if path.suffix.lower() not in exts:
        raise _err(
            path, f"unsupported extension {path.suffix!r} (expected one of {', '.join(exts)})"
        )
    if not path.exists():
        raise _err(path, "no such file")
    if not path.is_file():
        raise _err(path, "not a file")
    if path.stat().st_size == 0:
        raise _err(path, "empty file (0 bytes)")


# ----------------------------------------------------------------------------- TIFF


def _tiff_level0(tif):
    """The level-0 (full-resolution) series of a tifffile.TiffFile and its axes."""
    if not tif.series:
        raise ValueError("no image data in TIFF")
    series = tif.series[0]
    levels = getattr(series, "levels", None) or [series]
    return levels[0]


def _tiff_hw(level) -> tuple[int, int]:
    axes = level.axes
    shape = level.shape
    if "Y" in axes and "X" in axes:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    dims = [s for s in shape if s > 4]  # pragma: no cover - exotic axes
    if len(dims) >= 2:
        return int(dims[-2]), int(dims[-1])
    raise ValueError(f"cannot find image plane in TIFF axes {axes!r}")


def _tiff_to_hwc(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a tifffile array to (H, W) or (H, W, C) using its axes string."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:
        return np.squeeze(arr)
    # Take index 0 of every axis that is not Y, X or a sample/channel axis.
    chan = next((a for a in "SC" if a in axes and arr.shape[axes.index(a)] <= 4), None)
    index = []
    keep = []
    for a in axes:
        if a in ("Y", "X") or a == chan:
            index.append(slice(None))
            keep.append(a)
        else:
            index.append(0)
    arr = arr[tuple(index)]
    order = [keep.index("Y"), keep.index("X")]
    if chan is not None:
        order.append(keep.index(chan))
    return np.transpose(arr, order)


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            level = _tiff_level0(tif)
            h, w = _tiff_hw(level)
            check_pixels(path, h, w, max_pixels)
            arr = level.asarray()
            axes = level.axes
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt data
        raise _err(path, f"cannot read TIFF ({_reason(exc)})") from exc
    arr = np.asarray(arr)
    # a corrupt strip table can make tifffile return no pixels in a shape of its own
    if arr.ndim != len(axes) or arr.size == 0:
        raise _err(path, f"cannot read TIFF (pixel data of shape {arr.shape} does not fit "
                         f"its header's axes {axes!r})")
    return _tiff_to_hwc(arr, axes)


# ---------------------------------------------------------------------------- Pillow


class _pillow_unlimited:
    """Disable Pillow's own decompression-bomb limit: we apply ``max_pixels`` ourselves."""

    def __enter__(self):
        from PIL import Image

        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return self

    def __exit__(self, *exc):
        from PIL import Image

        self._warn.__exit__(*exc)
        Image.MAX_IMAGE_PIXELS = self._saved
        return False


def _read_pillow(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image

    try:
        with _pillow_unlimited(), Image.open(path) as im:
            w, h = im.size
            check_pixels(path, h, w, max_pixels)
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
            if im.mode in ("I;16", "I;16B", "I;16L") and arr.dtype != np.uint16:
                arr = arr.astype(np.uint16)
            elif im.mode == "I":
                arr = arr.astype(np.int32)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise _err(path, f"image too large ({exc}); {_RAISE_HINT}") from exc
    except Exception as exc:
        raise _err(path, f"cannot read image ({_reason(exc)})") from exc
    return arr


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower() or isinstance(exc, (EOFError,)):
        return f"truncated file: {text}"
    return text.splitlines()[0]


def check_pixels(path: Path | str, h: int, w: int, max_pixels: int | None = None) -> None:
    """Refuse an ``h`` x ``w`` image (sizes from its header) over the pixel limit."""
    if max_pixels is None:
        max_pixels = pixel_limit()
    if max_pixels and h * w > max_pixels:
        raise _err(
            path,
            f"image is {w}x{h} = {h * w} pixels, more than the limit {max_pixels} "
            f"(refused before decoding); {_RAISE_HINT}",
        )


def _read_raw(path: Path | str, exts: tuple[str, ...], limit: int | None) -> np.ndarray:
    path = Path(path)
    max_pixels = pixel_limit() if limit is None else limit
    _check_file(path, exts)
    if path.suffix.lower() in TIFF_EXTS:
        arr = _read_tiff(path, max_pixels)
    else:
        arr = _read_pillow(path, max_pixels)
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise _err(path, f"unexpected image array shape {arr.shape}")
    return arr


# -------------------------------------------------------------------------- public


def to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Apply the module's conversion rule: any array -> ``(H, W, 3) uint8``."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3:
        c = arr.shape[2]
        if c == 2:  # grey + alpha
            arr = arr[:, :, 0]
        elif c == 4:  # RGBA: drop alpha
            arr = arr[:, :, :3]
        elif c != 3:
            raise ValueError(f"{c} channels (expected 1 to 4)")
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        a = arr.astype(np.float64)
        if info.min < 0:  # signed: negative values are clipped to 0
            a = np.clip(a, 0, None)
        return np.clip(np.floor(a * 256.0 / (float(info.max) + 1.0)), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {arr.dtype}")


def image_shape(path: Path | str) -> tuple[int, int]:
    """``(H, W)`` of an image or mask, read from the header only (no pixel decoding)."""
    path = Path(path)
    _check_file(path, IMAGE_EXTS)
    try:
        if path.suffix.lower() in TIFF_EXTS:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return _tiff_hw(_tiff_level0(tif))
        from PIL import Image

        with _pillow_unlimited(), Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except InputError:
        raise
    except Exception as exc:
        raise _err(path, f"cannot read image header ({_reason(exc)})") from exc


def check_intact(path: Path | str) -> None:
    """Cheap completeness check without decoding pixels; raises InputError if truncated.

    TIFF: every level-0 strip/tile must lie inside the file. PNG: chunk CRCs and the
    IEND chunk (Pillow ``verify``). JPEG: the file must end with the EOI marker.
    """
    path = Path(path)
    _check_file(path, IMAGE_EXTS)
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_EXTS:
            import tifffile

            size = path.stat().st_size
            with tifffile.TiffFile(path) as tif:
                level = _tiff_level0(tif)
                for page in level.pages:
                    if page is None:
                        continue
                    page = page.keyframe if not hasattr(page, "dataoffsets") else page
                    for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=False):
                        if off + cnt > size:
                            raise _err(
                                path,
                                f"truncated file: image data ends at byte "
                                f"{off + cnt} but the file has {size} bytes",
                            )
        elif suffix == ".png":
            from PIL import Image

            with _pillow_unlimited(), Image.open(path) as im:
                im.verify()
        else:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 64))
                tail = fh.read().rstrip(b"\0")
            if not tail.endswith(b"\xff\xd9"):
                raise _err(path, "truncated file: JPEG end marker missing")
    except InputError:
        raise
    except Exception as exc:
        raise _err(path, f"cannot read image ({_reason(exc)})") from exc


def read_image(path: Path | str, max_pixels: int | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8`` RGB (see the module docstring for the rule).

    ``max_pixels=None`` uses the process-wide limit (:func:`pixel_limit`).
    """
    arr = _read_raw(path, IMAGE_EXTS, max_pixels)
    try:
        return to_rgb8(arr)
    except ValueError as exc:
        raise _err(path, str(exc)) from exc


def read_mask_values(path: Path | str, max_pixels: int | None = None) -> np.ndarray:
    """A mask file's ``(H, W)`` values as stored: colour masks reduced to the maximum
    over their colour channels (alpha ignored). :func:`read_mask` binarises them."""
    path = Path(path)
    arr = _read_raw(path, MASK_EXTS, max_pixels)
    if arr.ndim == 3:
        c = arr.shape[2]
        if c == 2:
            arr = arr[:, :, 0]
        elif c in (3, 4):
            arr = arr[:, :, :3].max(axis=2)
        elif c == 1:
            arr = arr[:, :, 0]
        else:
            raise _err(path, f"mask has {c} channels (expected 1 to 4)")
    return arr


def read_mask(
    path: Path | str, threshold: float | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Read a mask as ``(H, W) bool``: 0 is background, anything else glomerulus.

    Without ``threshold`` the mask must hold at most two distinct values (0/1, 0/255,
    ...); with it, ``mask = value > threshold``. Colour masks are reduced to the maximum
    over their colour channels (alpha ignored).
    """
    path = Path(path)
    arr = read_mask_values(path, max_pixels)
    if threshold is not None:
        return np.asarray(arr > threshold)
    values = np.unique(arr)
    if values.size > 2:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise _err(
            path,
            f"mask has {values.size} distinct values ({shown}); expected two "
            "(0 = background, non-zero = glomerulus) -- pass --mask-threshold T to "
            "binarise it as value > T",
        )
    if values.size == 2 and values[0] != 0:
        raise _err(
            path,
            f"mask values are {values[0]} and {values[1]}; expected 0 for background "
            "-- pass --mask-threshold T to binarise it as value > T",
        )
    return np.asarray(arr != 0)


def write_image(path: Path | str, array: np.ndarray) -> Path:
    """Write ``(H, W, 3)``/``(H, W)`` uint8 (or bool, stored 0/255) as PNG or TIFF.

    The format follows the suffix; the write is atomic (temporary file + rename).
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: write_image needs uint8 or bool, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InputError(f"{path}: write_image needs (H, W) or (H, W, 3), got {arr.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise InputError(f"{path}: can only write .png, .tif or .tiff")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        if suffix == ".png":
            from PIL import Image

            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG", compress_level=1)
        else:
            import tifffile

            big = arr.size > 2**31
            tifffile.imwrite(
                tmp,
                arr,
                photometric="rgb" if arr.ndim == 3 else "minisblack",
                compression="zlib",
                bigtiff=big,
                tile=(256, 256) if arr.shape[0] * arr.shape[1] > 4096 * 4096 else None,
            )
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; honour the umask like open()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
