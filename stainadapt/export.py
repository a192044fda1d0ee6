"""Export a run's segmentation network to ONNX or TorchScript, checked against PyTorch.

The exported model is the run's whole per-window pipeline, usable without stainadapt:

* **input** ``image``: ``float32 (B, 3, H, W)``, RGB in the **0..255** range (uint8
  pixel values cast to float), ``H`` and ``W`` multiples of 32 (any batch and size:
  the axes are dynamic);
* **output** ``probability``: ``float32 (B, 1, H, W)``, the sigmoid of G's logit;
  threshold it with ``threshold`` from the sidecar JSON (model.json's value);
* when a normaliser is baked in, a second output ``normalized``: ``float32 (B, 3, H,
  W)``, the stain-normalised image G saw (integers in 0..255). ONNX: a second graph
  output; TorchScript: the method ``model.normalize(image)`` (``model(image)`` returns
  the probabilities alone).

The graph is ``normalise -> round -> x / 255 -> G -> sigmoid``, exactly what
``stainadapt predict`` does for one window (uint8 window -> normaliser -> uint8 -> G).

**The stain normaliser is baked in** when the run was trained with ``--normalize``
(``normalizer=False`` / ``--no-normalizer`` exports G alone, for images normalised
elsewhere). The eager normalisers cannot be traced as they are: their per-image
too-little-tissue fallback and "subsample large images" are Python branches on data,
which tracing would freeze, and Macenko (and Vahadane's initialisation) needs an
eigendecomposition that ONNX lacks. The export therefore traces the trace-friendly
twins of :mod:`stainadapt.normalizers.exportable`: the same seeded pixel sample, the
fallback as ``torch.where``, percentiles by sort + gather, a fixed number of Jacobi
sweeps for the 3x3 eigenproblem, closed-form 2x2 solves, Vahadane's NMF unrolled. They
reproduce the eager normalisers to float rounding (an output pixel can differ by 1 where
a value sits at .5). A normaliser is baked in through its ``exportable()`` hook (the
built-ins, their subclasses and plugins that implement it); one without a twin is
refused (:class:`InputError`) unless ``--no-normalizer``. The sidecar JSON still
carries the normaliser's spec and fitted state (``normalizer``, as in model.json).

Left out on purpose: sliding windows, blending and flips (``predict`` does them around
G). Statistics come from each input image as a whole, so feed the model windows of the
size ``predict`` uses (``image_size``), not a whole slide, when comparing with it.

Every export is checked before it is kept: the exported model and the PyTorch pipeline
(the run's eager normaliser on uint8 images, then G) run on the same batch at two sizes
(``image_size`` and one 32 px larger, so the dynamic axes are exercised). The batch is
realistic: synthetic stained tiles (:mod:`stainadapt.data.synth`, one per stain in
turn) plus one near-blank tile (glass with 0.5 % coloured dust specks), which has no
tissue and so exercises the pass-through path. The largest absolute difference
of the probabilities must stay within ``atol``, and, with a normaliser, the mean
absolute difference of the normalised images (0..255 units, worst image) within
``image_atol``; the report (and ``stainadapt export``) gives the measured figures.
ONNX is checked with ``onnxruntime`` (the ``onnx`` extra: ``pip install
'stainadapt[onnx]'``); without it the file is written and the report says it was not
checked. The file is written atomically, only after a check passed.

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

import numpy as np
import torch
from torch import nn

from .errors import InputError, RunFailure
from .runs import meta_downsample

__all__ = ["FORMATS", "ExportReport", "ExportedSegmenter", "check_batch", "export_model"]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
NORMALIZED_NAME = "normalized"
#: Default probability tolerance for G alone (measured: 6e-8 onnxruntime, 0 TorchScript).
ATOL = 1e-4
#: ... and with a baked-in normaliser, where a normalised pixel may differ by 1 (a value
#: at .5 rounds the other way): measured up to 5.5e-4 with a trained resnet18 G at 256 px.
ATOL_NORMALIZED = 5e-3
#: Largest per-image mean |difference| of the normalised images, 0..255 units
#: (measured up to 5e-4: about one channel value in 2000 off by 1).
IMAGE_ATOL = 0.01
#: Stains of the synthetic tiles in the check batch, used in turn.
CHECK_STAINS = ("pasm", "masson", "pas")


class ExportedSegmenter(nn.Module):
    """``float32 (B, 3, H, W)`` RGB in 0..255 -> probabilities ``(B, 1, H, W)``.

    ``normalizer``: a trace-friendly normaliser (float 0..255 in and out, see
    :mod:`stainadapt.normalizers.exportable`) applied first, or None.
    """

    def __init__(self, net: nn.Module, normalizer: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.normalizer = normalizer

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """The image G sees (0..255): normalised when a normaliser is baked in."""
        return image if self.normalizer is None else self.normalizer(image)

    def segment(self, normalized: torch.Tensor) -> torch.Tensor:
        """Probabilities of an already normalised image (0..255)."""
        logits = self.net(normalized / 255.0)
        if isinstance(logits, tuple):
            logits = logits[0]
        return torch.sigmoid(logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segment(self.normalize(image))


class _BothOutputs(nn.Module):
    """ONNX graph with a baked-in normaliser: ``(probability, normalized)``."""

    def __init__(self, wrapper: ExportedSegmenter) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normalized = self.wrapper.normalize(image)
        return self.wrapper.segment(normalized), normalized


@dataclass
class ExportReport:
    """Where the export went and how well it agreed with PyTorch.

    ``max_abs_diff`` / ``mean_abs_diff``: probabilities, over the whole check batch.
    ``image_max_abs_diff`` / ``image_mean_abs_diff``: the normalised images (0..255
    units; the mean is the worst image's), only with a baked-in normaliser.
    """

    path: Path
    format: str
    sidecar: Path
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    image_max_abs_diff: float | None = None
    image_mean_abs_diff: float | None = None
    checked_with: str | None = None
    normalizer: str | None = None
    baked_in: bool = False
    sizes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _apply_statistics(net: nn.Module, statistics: str | Path) -> str:
    """Put the chosen BatchNorm statistics into ``net``; what the contract records."""
    from .inference.adapt import apply_adapted_state, kept_target_statistics, read_adapted_state

    if str(statistics) == "trained":
        return "trained"
    if str(statistics) == "target":
        apply_adapted_state(net, kept_target_statistics(net))
        return "target"
    state, _ = read_adapted_state(statistics, net)
    apply_adapted_state(net, state)
    return f"file {Path(statistics).name}"


def _contract(meta: dict[str, Any], fmt: str, baked_in: bool) -> dict[str, Any]:
    from .version import __version__

    outputs: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "dtype": "float32",
        "shape": ["batch", 1, "height", "width"],
        "meaning": "probability of glomerulus (sigmoid of G's logit)",
    }
    contract: dict[str, Any] = {
        "format": fmt,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, "height", "width"],
            "range": "RGB 0..255 (uint8 values as float)",
            "sides_multiple_of": 32,
            "normalised_first": bool(meta.get("normalizer")) and not baked_in,
        },
        "output": outputs,
        "normalizer_baked_in": baked_in,
        "threshold": meta.get("threshold", 0.5),
        "image_size": meta.get("image_size"),
        # the graph sees images this many times coarser than the training tiles: resample
        # inputs down by it first (box filter) and the probabilities back up
        "downsample": meta_downsample(meta),
        "mpp": meta.get("mpp"),
        "backbone": meta.get("backbone"),
        # applied inside the graph, after x / 255: the encoder's pretrained mean/std
        "input_norm_in_graph": meta.get("input_norm"),
        "normalizer": meta.get("normalizer"),
        "stainadapt_version": __version__,
        "trained_with": meta.get("stainadapt_version"),
    }
    if baked_in:
        contract["normalized"] = {
            "name": NORMALIZED_NAME,
            "dtype": "float32",
            "shape": ["batch", 3, "height", "width"],
            "meaning": "the stain-normalised image G saw, integers in 0..255 "
            "(ONNX: second output; TorchScript: model.normalize(image))",
        }
    return contract


def check_batch(size: int, tiles: int = 2, seed: int = 0) -> torch.Tensor:
    """The check images: ``float32 (tiles + 1, 3, size, size)``, uint8 values.

    ``tiles`` synthetic stained tiles (stains :data:`CHECK_STAINS` in turn) and, last, a
    near-blank tile: slide glass with sensor noise and 0.5 % coloured dust specks, no
    tissue pixel (so every normaliser takes its pass-through path).
    """
    from .data.synth import make_tile, tile_rng

    images = [
        make_tile(stain, size, tile_rng(seed, stain, i))[0]
        for i, stain in ((i, CHECK_STAINS[i % len(CHECK_STAINS)]) for i in range(tiles))
    ]
    rng = np.random.default_rng([seed, size])
    blank = np.clip(rng.normal((232, 230, 236), 3, (size, size, 3)), 0, 255)
    # Dust specks: coloured, but one channel stays brighter than any tissue threshold
    # (the eager Vahadane fails on a handful of real tissue pixels: see docs/objects.md).
    debris = rng.random((size, size)) < 0.005
    specks = rng.integers(40, 200, (int(debris.sum()), 3))
    specks[np.arange(len(specks)), rng.integers(0, 3, len(specks))] = 250
    blank[debris] = specks
    images.append(blank.round().astype(np.uint8))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().contiguous()


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    outputs = [OUTPUT_NAME] + ([NORMALIZED_NAME] if isinstance(module, _BothOutputs) else [])
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in [INPUT_NAME, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=axes,
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


def _run_onnx(
    path: Path, batch: torch.Tensor, normalized: bool
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [OUTPUT_NAME] + ([NORMALIZED_NAME] if normalized else [])
    outs = session.run(names, {INPUT_NAME: batch.numpy()})
    return torch.from_numpy(outs[0]), torch.from_numpy(outs[1]) if normalized else None


def export_model(
    run_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    check: bool = True,
    atol: float | None = None,
    image_atol: float = IMAGE_ATOL,
    batch: int = 2,
    opset: int = 17,
    seed: int = 0,
    normalizer: bool = True,
    statistics: str | Path = "trained",
) -> ExportReport:
    """Export ``run_dir``'s network (and normaliser) to ``out`` (see the module docstring).

    Writes ``out`` and ``out`` + ``.json`` (the input contract, threshold and the
    normaliser's spec and fitted state). ``normalizer=False`` leaves a run's normaliser
    out of the graph (images must then be normalised first). ``batch``: synthetic tiles
    in the check batch (plus one near-blank). ``atol``: largest allowed probability
    difference (default :data:`ATOL`, or :data:`ATOL_NORMALIZED` with a baked-in
    normaliser); ``image_atol``: largest allowed per-image mean difference of the
    normalised images (0..255). ``statistics``: the BatchNorm statistics frozen into the
    export: ``"trained"`` (the model's), ``"target"`` (those a ``--target-statistics``
    run kept for its target stain) or the path of a statistics file written by ``predict
    --adapt``. Raises :class:`InputError` for a bad format, run folder
    or a normaliser that cannot be baked in, and :class:`RunFailure` when the exported
    model disagrees with PyTorch.
    """
    from .atomic import atomic_save, atomic_write_text
    from .normalizers.base import TissueWarning
    from .runs import load_model, normalizer_from_meta

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name (e.g. {out / ('model.' + fmt)})")
    net, meta = load_model(run_dir, device="cpu")
    batchnorm = _apply_statistics(net, statistics)
    entry = meta.get("normalizer") or None
    eager_norm = normalizer_from_meta(entry) if entry and normalizer else None
    baked = None
    if eager_norm is not None:
        from .normalizers.exportable import exportable_normalizer

        eager_norm = eager_norm.eval()
        baked = exportable_normalizer(eager_norm)
    if atol is None:
        atol = ATOL if baked is None else ATOL_NORMALIZED
    wrapper = ExportedSegmenter(net, baked).eval()
    reference = ExportedSegmenter(net).eval()  # G alone: fed the eager normaliser's output
    size = int(meta.get("image_size") or 256)
    size = max(32, size - size % 32)
    sizes = [size, size + 32]
    contract = _contract(meta, fmt, baked is not None)
    contract["batchnorm_statistics"] = batchnorm
    report = ExportReport(
        out,
        fmt,
        out.with_name(out.name + ".json"),
        sizes=sizes,
        normalizer=entry.get("spec") if entry else None,
        baked_in=baked is not None,
    )
    if entry and baked is None:
        report.notes.append(
            f"the run used a {entry.get('spec')} normaliser, left out (--no-normalizer): the "
            f"exported model expects stain-normalised input; its fitted state is in "
            f"{report.sidecar.name}"
        )
    batches = [check_batch(s, batch, seed + i) for i, s in enumerate(sizes)]
    example = batches[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TissueWarning)  # the near-blank tile, on purpose
        if eager_norm is None:
            expected_norm = batches
        else:
            expected_norm = [eager_norm(b.to(torch.uint8)).float() for b in batches]
        expected = [reference(b) for b in expected_norm]

    def compare(outputs: list[tuple[torch.Tensor, torch.Tensor | None]], tool: str) -> None:
        probs = [(o - e).abs() for (o, _), e in zip(outputs, expected, strict=True)]
        report.max_abs_diff = max(float(d.max()) for d in probs)
        report.mean_abs_diff = float(torch.cat([d.flatten() for d in probs]).mean())
        report.checked_with = tool
        problems = []
        if not report.max_abs_diff <= atol:
            problems.append(f"max |probability difference| {report.max_abs_diff:.3g} > {atol:g}")
        if baked is not None:
            imgs = [(n - e).abs() for (_, n), e in zip(outputs, expected_norm, strict=True)]
            report.image_max_abs_diff = max(float(d.max()) for d in imgs)
            report.image_mean_abs_diff = max(float(d.mean(dim=(1, 2, 3)).max()) for d in imgs)
            if not report.image_mean_abs_diff <= image_atol:
                problems.append(
                    f"mean |normalised image difference| {report.image_mean_abs_diff:.3g} "
                    f"> {image_atol:g} (0..255)"
                )
        if problems:
            raise RunFailure(
                f"{out}: the exported model disagrees with PyTorch ({'; '.join(problems)}); "
                "nothing written"
            )

    def write(tmp: Path) -> None:
        if fmt == "onnx":
            module = _BothOutputs(wrapper).eval() if baked is not None else wrapper
            with torch.no_grad():
                _export_onnx(module, example, tmp, opset)
            if not _onnx_metadata(tmp, contract):
                report.notes.append("onnx not installed: no metadata in the file (see the .json)")
            if check:
                outs = [_run_onnx(tmp, b, baked is not None) for b in batches]
                if outs[0] is None:
                    report.notes.append(
                        "not checked: onnxruntime is not installed (pip install 'stainadapt[onnx]')"
                    )
                else:
                    compare(outs, "onnxruntime")  # type: ignore[arg-type]
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation notes
                methods = {"forward": example}
                if baked is not None:
                    methods["normalize"] = example
                traced = torch.jit.trace_module(wrapper, methods, check_trace=False)
                torch.jit.save(
                    traced, str(tmp), _extra_files={"stainadapt.json": json.dumps(contract)}
                )
                if check:
                    loaded = torch.jit.load(str(tmp), map_location="cpu")
                    compare(
                        [
                            (loaded(b), loaded.normalize(b) if baked is not None else None)
                            for b in batches
                        ],
                        "torch.jit.load",
                    )

    try:
        atomic_save(out, write)
    except RuntimeError as exc:  # exporter errors (OnnxExporterError is one)
        raise RunFailure(f"{out}: {fmt} export failed ({type(exc).__name__}: {exc})") from exc
    atomic_write_text(report.sidecar, json.dumps(contract, indent=2) + "\n")
    return report
