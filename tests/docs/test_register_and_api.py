"""Public API the docs and examples use: registry.register and the lazy re-exports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import stainadapt
from stainadapt import registry
from stainadapt.discriminators.base import Discriminator
from stainadapt.errors import PluginError


class _Tiny(Discriminator):
    kind = "domain"
    consumes = ("mask",)

    def __init__(self, width: int = 4, weight: float = 0.01) -> None:
        super().__init__("tiny", {"width": width, "weight": weight})
        self.weights = {"tiny": float(weight)}
        self.conv = torch.nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(width, 1)

    def forward(self, inputs):
        return {"tiny": self.head(self.conv(inputs["mask"]).mean(dim=(2, 3))).squeeze(1)}


def _create_tiny(features, width: int = 4, weight: float = 0.01) -> _Tiny:
    del features
    return _Tiny(width=width, weight=weight)


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})
    registry.clear_cache()
    yield
    registry.clear_cache()


def test_register_makes_a_plugin_usable(clean_registry):
    assert stainadapt.register("discriminators", "tiny", _create_tiny) is _create_tiny
    assert "tiny" in registry.plugin_names("discriminators")
    disc = stainadapt.create("discriminators", "tiny:width=8", {})
    assert disc.conv.out_channels == 8
    with pytest.raises(PluginError, match="accepted options"):
        stainadapt.create("discriminators", "tiny:depth=2", {})
    row = next(i for i in registry.list_plugins("discriminators") if i.name == "tiny")
    assert (row.package, row.status) == ("(registered)", "ok")
    from stainadapt.testing import check_discriminator

    check_discriminator("tiny", device="cpu")


def test_register_again_replaces(clean_registry):
    registry.register("discriminators", "tiny", _create_tiny)
    registry.register("discriminators", "tiny", lambda f, width=2: _Tiny(width=width))
    assert stainadapt.create("discriminators", "tiny", {}).conv.out_channels == 2


def test_register_refuses_installed_names_and_bad_input(clean_registry):
    with pytest.raises(PluginError, match="already installed by package stainadapt"):
        registry.register("discriminators", "shape", _create_tiny)
    with pytest.raises(PluginError, match="unknown plugin group"):
        registry.register("losses", "x", _create_tiny)
    with pytest.raises(PluginError, match="not callable"):
        registry.register("discriminators", "x", 3)
    for bad in ("", "a:b", "a b", "a,b"):
        with pytest.raises(PluginError, match="plugin name"):
            registry.register("discriminators", bad, _create_tiny)


def test_register_of_an_installed_factory_is_a_no_op(clean_registry):
    # a script that registers its plugin keeps working after the plugin is pip-installed
    from stainadapt.discriminators.shape import create_shape

    assert registry.register("discriminators", "shape", create_shape) is create_shape
    assert registry._registered == {}
    row = next(i for i in registry.list_plugins("discriminators", load=False)
               if i.name == "shape")
    assert row.package == "stainadapt"


def test_register_honours_disable(clean_registry, monkeypatch):
    monkeypatch.setenv("STAINADAPT_DISABLE_PLUGINS", "tiny")
    registry.register("discriminators", "tiny", _create_tiny)
    with pytest.raises(PluginError, match="disabled"):
        stainadapt.create("discriminators", "tiny", {})


def test_lazy_api_names():
    from stainadapt.config import TrainConfig
    from stainadapt.engine.trainer import resume, train
    from stainadapt.inference import predict_paths
    from stainadapt.metrics import evaluate_folders

    assert stainadapt.TrainConfig is TrainConfig
    assert stainadapt.train is train and stainadapt.resume is resume
    assert stainadapt.predict is predict_paths
    assert stainadapt.evaluate is evaluate_folders
    assert {"train", "predict", "evaluate", "TrainConfig"} <= set(dir(stainadapt))
    with pytest.raises(AttributeError):
        stainadapt.no_such_name  # noqa: B018


def test_import_stays_light():
    code = "import sys, stainadapt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
