"""Untrusted files: nothing a user hands us is unpickled or imported.

Model weights are safetensors, training state is read with ``torch.load(weights_only=True)``
and a model.json can only name an installed backbone plugin. Each test plants a payload
that would leave a marker file if it ever ran.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stainadapt.cli.app import app
from stainadapt.engine.state import load_state
from stainadapt.errors import InputError
from stainadapt.models.unet import SegmentationNet
from stainadapt.runs import load_model, read_meta, save_model

PACKAGE = Path(__file__).resolve().parents[2] / "stainadapt"


class _Payload:
    """Unpickling this calls Path.touch(marker): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def run(tmp_path) -> Path:
    torch.manual_seed(0)
    net = SegmentationNet("resnet18", decoder_channels=(16, 16, 8, 8, 8))
    save_model(tmp_path / "run", net, {"image_size": 64})
    return tmp_path / "run"


def test_state_pt_with_a_pickle_payload_is_refused_unrun(tmp_path, run):
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "model": {}, "evil": _Payload(marker)}, run / "state.pt")
    with pytest.raises(InputError, match="unreadable training state") as info:
        load_state(run / "state.pt")
    assert str(run / "state.pt") in str(info.value)
    assert not marker.exists()
    (run / "config.toml").write_text('source = "x"\nmode = "source-only"\n')
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 2 and "state.pt" in res.output, res.output
    assert not marker.exists()


def test_pickle_posing_as_safetensors_is_refused_unrun(tmp_path, run):
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputError, match="unreadable safetensors"):
        load_model(run)
    torch.save({"w": _Payload(marker)}, run / "model.safetensors")  # a torch zip pickle
    with pytest.raises(InputError, match="unreadable safetensors"):
        load_model(run)
    assert not marker.exists()


def test_model_json_cannot_import_a_module(tmp_path, run, monkeypatch):
    marker = tmp_path / "imported"
    evil = tmp_path / "site"
    evil.mkdir()
    (evil / "evil_backbone.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(evil))
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 150, 200)).save(tmp_path / "in.png")
    meta = json.loads((run / "model.json").read_text())
    record = meta.pop("encoder")  # a name alone: only plugins and timm's registry resolve it
    for name in ("evil_backbone", "evil_backbone:factory", "os.system"):
        meta["backbone"] = name
        (run / "model.json").write_text(json.dumps(meta))
        with pytest.raises(InputError, match="unknown backbone|bad option"):
            load_model(run)
        res = CliRunner().invoke(app, ["predict", str(tmp_path / "in.png"), "--model", str(run),
                                       "--out", str(tmp_path / "o"), "--device", "cpu"])
        assert res.exit_code == 2 and "model.json" in res.output
    assert not marker.exists() and "evil_backbone" not in sys.modules
    assert read_meta(run)["backbone"] == "os.system"  # read as data, nothing more
    # an encoder record is data too: a timm registry name and plain arguments, nothing
    # that makes timm read a checkpoint (which it would unpickle) or reach the network
    payload = tmp_path / "ckpt.pth"
    torch.save({"evil": _Payload(marker)}, payload)
    for bad in ({"model_args": {"checkpoint_path": str(payload)}},
                {"model_args": {"pretrained": True}},
                {"model_args": {"pretrained_cfg_overlay": {"file": str(payload)}}},
                {"timm_name": "hf-hub:evil/repo"}, {"timm_name": "evil_backbone:factory"}):
        (run / "model.json").write_text(json.dumps({**meta, "encoder": {**record, **bad}}))
        with pytest.raises(InputError, match="encoder"):
            load_model(run)
    assert not marker.exists() and "evil_backbone" not in sys.modules


def test_no_unsafe_deserialisation_in_the_package():
    """A static guard: every torch.load passes weights_only=True; no pickle/eval/exec."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                problems.append(f"{path}: torch.load without weights_only=True")
        for pattern in (r"\bpickle\.loads?\(", r"\bdill\.", r"allow_pickle\s*=\s*True",
                        r"(?<![\w.`])eval\(", r"(?<![\w.`])exec\(", r"yaml\.load\("):
            if re.search(pattern, text):
                problems.append(f"{path}: {pattern}")
    assert not problems, "\n".join(problems)
