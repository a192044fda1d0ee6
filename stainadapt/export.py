"""Export a run's segmentation network to ONNX or TorchScript, checked against PyTorch.

The exported model is G alone, wrapped so it is usable without stainadapt:

* **input** ``image``: ``float32 (B, 3, H, W)``, RGB in the **0..255** range (uint8
  pixel values cast to float), ``H`` and ``W`` multiples of 32 (any batch and size:
  the axes are dynamic);
* **output** ``probability``: ``float32 (B, 1, H, W)``, the sigmoid of G's logit;
  threshold it with ``threshold`` from the sidecar JSON (model.json's value).

The graph is ``x / 255 -> G -> sigmoid``, exactly what ``stainadapt predict`` feeds G
for one window. What it leaves out, on purpose:

* **The stain normaliser is not baked in.** A run trained with ``--normalize`` has a
  fitted normaliser in model.json, but its forward pass estimates each image's stains
  (Macenko: an eigendecomposition and percentiles of a pixel sample; Vahadane: a
  dictionary-learning solve; every one: a per-image fallback when there is too little
  tissue). ONNX has no eigendecomposition operator, and tracing would freeze the
  data-dependent branches, so a baked-in normaliser would be silently wrong on some
  images. Instead the sidecar JSON carries the normaliser's spec and fitted state
  (``normalizer``, as in model.json), and the input contract says the images must be
  normalised first: in Python, ``normalizer_from_meta(sidecar["normalizer"])`` from
  ``stainadapt.engine.checkpoint`` rebuilds the fitted normaliser (uint8 in, uint8
  out); or ``stainadapt normalize --reference REF --method SPEC`` with the reference
  image the run was trained with.
* Sliding windows, blending and flips (``predict`` does them around G).

Every export is checked before it is kept: the exported model and the PyTorch wrapper
run on the same random uint8-valued batch at two sizes (``image_size`` and one 32 px
larger, so the dynamic axes are exercised) and the largest absolute difference of the
probabilities must stay within ``atol``. ONNX is checked with ``onnxruntime`` (the
``onnx`` extra: ``pip install 'stainadapt[onnx]'``); without it the file is written
and the report says it was not checked. The file is written atomically, only after a
check passed.

ONNX uses ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter):
it needs nothing beyond torch, while the default dynamo exporter of torch >= 2.9
needs ``onnxscript``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError, RunFailure

__all__ = ["FORMATS", "ExportReport", "ExportedSegmenter", "export_model"]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


class ExportedSegmenter(nn.Module):
    """``float32 (B, 3, H, W)`` RGB in 0..255 -> probabilities ``(B, 1, H, W)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(image / 255.0)
        if isinstance(logits, tuple):
            logits = logits[0]
        return torch.sigmoid(logits)


@dataclass
class ExportReport:
    """Where the export went and how well it agreed with PyTorch."""

    path: Path
    format: str
    sidecar: Path
    max_abs_diff: float | None = None
    checked_with: str | None = None
    sizes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _contract(meta: dict[str, Any], fmt: str) -> dict[str, Any]:
    from . import __version__

    return {
        "format": fmt,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, "height", "width"],
            "range": "RGB 0..255 (uint8 values as float)",
            "sides_multiple_of": 32,
            "normalised_first": bool(meta.get("normalizer")),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 1, "height", "width"],
            "meaning": "probability of glomerulus (sigmoid of G's logit)",
        },  # fmt: skip
        "threshold": meta.get("threshold", 0.5),
        "image_size": meta.get("image_size"),
        "backbone": meta.get("backbone"),
        "normalizer": meta.get("normalizer"),
        "stainadapt_version": __version__,
        "trained_with": meta.get("stainadapt_version"),
    }


def _random_batch(size: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).float()


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=opset,
        )


def _onnx_metadata(path: Path, contract: dict[str, Any]) -> bool:
    try:
        import onnx
    except ImportError:
        return False
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "stainadapt", json.dumps(contract)
    onnx.save(model, str(path))
    return True


def _run_onnx(path: Path, batch: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
    return torch.from_numpy(out)


def export_model(
    run_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    check: bool = True,
    atol: float = 1e-4,
    batch: int = 2,
    opset: int = 17,
    seed: int = 0,
) -> ExportReport:
    """Export the network of ``run_dir`` to ``out`` (see the module docstring).

    Writes ``out`` and ``out`` + ``.json`` (the input contract, threshold and the
    normaliser to apply first, if any). Raises :class:`InputError` for a bad format or
    run folder and :class:`RunFailure` when the exported model disagrees with PyTorch.
    """
    from .engine.checkpoint import atomic_save, atomic_write_text, load_model

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name (e.g. {out / ('model.' + fmt)})")
    net, meta = load_model(run_dir, device="cpu")
    wrapper = ExportedSegmenter(net).eval()
    size = int(meta.get("image_size") or 256)
    size = max(32, size - size % 32)
    sizes = [size, size + 32]
    contract = _contract(meta, fmt)
    report = ExportReport(out, fmt, out.with_name(out.name + ".json"), sizes=sizes)
    if meta.get("normalizer"):
        report.notes.append(
            f"the run used a {meta['normalizer'].get('spec')} normaliser: the exported model "
            f"expects stain-normalised input; its fitted state is in {report.sidecar.name}"
        )
    example = _random_batch(size, batch, seed)
    batches = [_random_batch(s, batch, seed + 1 + i) for i, s in enumerate(sizes)]
    with torch.no_grad():
        expected = [wrapper(b) for b in batches]

    def compare(outputs: list[torch.Tensor | None], tool: str) -> None:
        if any(o is None for o in outputs):
            return
        diff = max(float((o - e).abs().max()) for o, e in zip(outputs, expected, strict=True))
        report.max_abs_diff, report.checked_with = diff, tool
        if not diff <= atol:
            raise RunFailure(
                f"{out}: the exported model disagrees with PyTorch "
                f"(max |difference| {diff:.3g} > {atol:g}); nothing written"
            )

    def write(tmp: Path) -> None:
        if fmt == "onnx":
            _export_onnx(wrapper, example, tmp, opset)
            if not _onnx_metadata(tmp, contract):
                report.notes.append("onnx not installed: no metadata in the file (see the .json)")
            if check:
                outs = [_run_onnx(tmp, b) for b in batches]
                if outs[0] is None:
                    report.notes.append(
                        "not checked: onnxruntime is not installed (pip install 'stainadapt[onnx]')"
                    )
                compare(outs, "onnxruntime")
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation notes
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                torch.jit.save(
                    traced, str(tmp), _extra_files={"stainadapt.json": json.dumps(contract)}
                )
                if check:
                    loaded = torch.jit.load(str(tmp), map_location="cpu")
                    compare([loaded(b) for b in batches], "torch.jit.load")

    try:
        atomic_save(out, write)
    except RuntimeError as exc:  # exporter errors (OnnxExporterError is one)
        raise RunFailure(f"{out}: {fmt} export failed ({type(exc).__name__}: {exc})") from exc
    atomic_write_text(report.sidecar, json.dumps(contract, indent=2) + "\n")
    return report
