"""Normalise image files: the library side of ``stainadapt normalize``.

Inputs are files or folders (searched recursively for ``.png``, ``.jpg``, ``.jpeg``,
``.tif`` and ``.tiff``). Each output keeps the input's path relative to the folder it
was found in (a file given directly keeps its name) and its format: TIFF in, TIFF out;
PNG in, PNG out; JPEG in, PNG out (no second lossy compression).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import InputError, RunFailure
from .base import TissueWarning

__all__ = ["NormalizeReport", "collect_inputs", "load_normalizer", "normalize_paths"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class NormalizeReport:
    """What :func:`normalize_paths` did."""

    written: list[Path] = field(default_factory=list)
    #: outputs whose input had too little tissue and was copied unchanged
    passed_through: list[Path] = field(default_factory=list)
    #: ``"path: reason"`` for each input that could not be normalised
    failed: list[str] = field(default_factory=list)


def _output_name(rel: Path) -> Path:
    suffix = rel.suffix.lower()
    return rel.with_suffix(".png") if suffix in (".jpg", ".jpeg") else rel


def collect_inputs(inputs: Sequence[Path | str]) -> list[tuple[Path, Path]]:
    """``(source, output path relative to the out folder)`` for every input image.

    Raises :class:`InputError` for a missing path, a file that is not an image, a folder
    without images, or two inputs that would write the same output.
    """
    pairs: list[tuple[Path, Path]] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                problems.append(f"{path}: folder has no {'/'.join(IMAGE_EXTS)} images")
            pairs += [(p, _output_name(p.relative_to(path))) for p in found]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTS:
                problems.append(f"{path}: not an image ({', '.join(IMAGE_EXTS)})")
            else:
                pairs.append((path, _output_name(Path(path.name))))
        else:
            problems.append(f"{path}: no such file or folder")
    seen: dict[Path, Path] = {}
    for src, rel in pairs:
        if rel in seen:
            problems.append(f"{src}: would overwrite the output of {seen[rel]} ({rel})")
        seen[rel] = src
    if problems:
        raise InputError("; ".join(problems) if len(problems) == 1 else "\n" + "\n".join(problems))
    return pairs


def load_normalizer(
    spec: str, reference: Path | str | None, device: str | torch.device = "cpu"
) -> Any:
    """Create the normaliser ``spec`` (e.g. ``"macenko:alpha=1"``), fitted to ``reference``."""
    from ..data.io import read_image
    from ..registry import create

    norm = create("normalizers", spec).to(resolve_device(device))
    if reference is not None:
        ref = read_image(reference)
        try:
            norm.fit(ref)
        except InputError as exc:
            raise InputError(f"{reference}: {exc}") from exc
    return norm


def normalize_paths(
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    spec: str = "macenko",
    reference: Path | str | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
    normalizer: Any = None,
) -> NormalizeReport:
    """Normalise every input image into ``out_dir``; see the module docstring.

    ``normalizer`` (an already fitted instance) replaces ``spec``/``reference``.
    Every input is tried; if some fail, :class:`RunFailure` lists them at the end (the
    others are written). ``progress(done, total)`` is called after each file.
    """
    from ..data.io import read_image, write_image

    out_dir = Path(out_dir)
    pairs = collect_inputs(inputs)
    sources = {src.resolve() for src, _ in pairs}
    clash = [out_dir / rel for _, rel in pairs if (out_dir / rel).resolve() in sources]
    if clash:
        raise InputError(f"{clash[0]}: output would overwrite an input; choose another --out")
    norm = normalizer if normalizer is not None else load_normalizer(spec, reference, device)
    dev = norm._ref_tensor().device if hasattr(norm, "_ref_tensor") else torch.device("cpu")
    report = NormalizeReport()
    for done, (src, rel) in enumerate(pairs, start=1):
        try:
            arr = read_image(src)
            if not arr.flags.writeable:  # torch refuses read-only memory
                arr = arr.copy()
            image = torch.from_numpy(arr).permute(2, 0, 1).to(dev)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TissueWarning)
                result = norm(image)
            out_path = write_image(out_dir / rel, result.permute(1, 2, 0).cpu().numpy())
        except InputError as exc:
            msg = str(exc)
            report.failed.append(msg if msg.startswith(str(src)) else f"{src}: {msg}")
        else:
            report.written.append(out_path)
            for w in caught:
                if issubclass(w.category, TissueWarning):
                    if out_path not in report.passed_through:
                        report.passed_through.append(out_path)
                else:
                    warnings.warn(w.message, w.category, stacklevel=2)
        if progress is not None:
            progress(done, len(pairs))
    if report.failed:
        raise RunFailure(
            f"{len(report.failed)} of {len(pairs)} image(s) failed "
            f"({len(report.written)} written to {out_dir}):\n" + "\n".join(report.failed)
        )
    return report
