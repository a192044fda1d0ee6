"""The ``exportable()`` hook: built-ins, their subclasses and plugin normalisers export.

A plugin normaliser that implements the hook is baked into ``stainadapt export`` like a
built-in; one without it is refused with one line that points at ``--no-normalizer``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from stainadapt import registry
from stainadapt.cli.app import app
from stainadapt.errors import InputError
from stainadapt.export import export_model
from stainadapt.models.unet import SegmentationNet
from stainadapt.normalizers import Macenko, Reinhard, StainNormalizer, Vahadane
from stainadapt.normalizers.exportable import ExportableNormalizer, exportable_normalizer
from stainadapt.normalizers.od import tissue_from_intensity
from stainadapt.normalizers.ops import PixelSample
from stainadapt.runs import normalizer_to_meta, save_model
from stainadapt.testing.normalizers import synthetic_he


def _tissue_mean(x: Tensor, tissue: Tensor) -> Tensor:
    """``(B, 3, K)`` intensities, ``(B, K)`` mask -> ``(B, 3)`` mean over the mask."""
    w = tissue.to(torch.float32)
    return (x.to(torch.float32) * w[:, None]).sum(dim=2) / w.sum(dim=1).clamp(min=1)[:, None]


class Gain(StainNormalizer):
    """A plugin: scales each channel so the mean tissue intensity matches the reference's."""

    def __init__(self, beta: float = 0.15) -> None:
        super().__init__(beta=beta)
        self.register_buffer("ref_mean", torch.full((3,), 128.0))

    def _statistics(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        tissue = tissue_from_intensity(x, self.io, self.beta)
        return {"mean": _tissue_mean(x, tissue)}, self._enough_tissue(tissue)

    def _set_reference(self, stats: dict[str, Tensor]) -> None:
        self.ref_mean.copy_(stats["mean"][0])

    def _params(self, stats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return ((self.ref_mean / stats["mean"])[:, :, None],)

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        return x.to(torch.float32) * params[0]

    def exportable(self) -> nn.Module:
        return ExportableGain(self)


class ExportableGain(ExportableNormalizer):
    def __init__(self, source: Gain) -> None:
        super().__init__(source)
        self._copy_buffers(source, "ref_mean")

    def _fit(self, sample: PixelSample) -> tuple[tuple[Tensor, ...], Tensor]:
        return ((self.ref_mean / _tissue_mean(sample.x, sample.tissue))[:, :, None],), sample.enough

    def _transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        return x * params[0]


class Flat(Gain):
    """A plugin without a trace-friendly twin."""

    def exportable(self) -> nn.Module:
        return StainNormalizer.exportable(self)


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})
    registry.clear_cache()
    registry.register("normalizers", "gain", Gain)
    registry.register("normalizers", "flat", Flat)
    yield
    registry.clear_cache()


def _reference() -> Tensor:
    return torch.from_numpy(synthetic_he(64, seed=1)).permute(2, 0, 1).contiguous()


def _run(folder, spec: str):
    norm = registry.create("normalizers", spec).fit(_reference())
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(32, 16, 16, 8, 8))
    save_model(folder, net, {"image_size": 64, "normalizer": normalizer_to_meta(spec, norm)})
    return folder


@pytest.mark.parametrize("cls", [Macenko, Reinhard, Vahadane])
def test_builtins_and_their_subclasses_have_a_twin(cls):
    sub = type(f"My{cls.__name__}", (cls,), {})
    for norm in (cls().fit(_reference()), sub().fit(_reference())):
        twin = exportable_normalizer(norm)
        assert isinstance(twin, ExportableNormalizer) and not twin.training
        img = torch.from_numpy(synthetic_he(48, seed=2)).permute(2, 0, 1)[None]
        diff = (twin(img.float()) - norm(img).float()).abs()
        assert float(diff.max()) <= 1.0


def test_plugin_with_the_hook_is_baked_in(plugins, tmp_path):
    norm = registry.create("normalizers", "gain").fit(_reference())
    img = torch.from_numpy(synthetic_he(48, seed=2)).permute(2, 0, 1)[None]
    twin = exportable_normalizer(norm)
    assert float((twin(img.float()) - norm(img).float()).abs().max()) <= 1.0
    run = _run(tmp_path / "run", "gain")
    report = export_model(run, tmp_path / "g.pt", "torchscript")
    assert report.baked_in and report.normalizer == "gain"
    res = CliRunner().invoke(
        app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    )
    assert res.exit_code == 0, res.output
    assert "normaliser baked in: gain" in res.output


def test_plugin_without_the_hook_gets_one_line(plugins, tmp_path):
    with pytest.raises(InputError, match="cannot bake a Flat normaliser") as err:
        exportable_normalizer(registry.create("normalizers", "flat").fit(_reference()))
    assert "\n" not in str(err.value) and "--no-normalizer" in str(err.value)
    with pytest.raises(InputError, match="--no-normalizer"):
        exportable_normalizer(nn.Identity())  # no hook at all
    run = _run(tmp_path / "run", "flat")
    res = CliRunner().invoke(
        app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
    )
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if "cannot bake" in line]
    assert len(lines) == 1 and "--no-normalizer" in lines[0], res.output
    res = CliRunner().invoke(
        app,
        [
            "export",
            str(run),
            "--format",
            "torchscript",
            "--out",
            str(tmp_path / "m.pt"),
            "--no-normalizer",
        ],
    )
    assert res.exit_code == 0, res.output
