"""The third-party path: pip-install plugins/stainadapt-example and see it listed and usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "stainadapt-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PLUGIN)],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def _run(env, *code_or_args: str, module: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stainadapt", *code_or_args] if module else [
        sys.executable, "-c", code_or_args[0]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_plugin_is_listed(installed):
    result = _run(installed, "plugins", "--json", "--group", "discriminators")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["output"]["package"] == "stainadapt-example"
    assert rows["output"]["status"] == "ok", rows["output"]["error"]


def test_installed_plugin_passes_the_contract(installed):
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from stainadapt.testing import check_discriminator\n"
        "check_discriminator('output:width=8,depth=2')\n"
        "print('contract ok')\n"
    )
    result = _run(installed, code, module=False)
    assert result.returncode == 0, result.stderr
    assert "contract ok" in result.stdout


def test_disabled_plugin_is_not_created(installed):
    env = dict(installed, STAINADAPT_DISABLE_PLUGINS="output")
    code = (
        "import stainadapt\n"
        "try:\n    stainadapt.create('discriminators', 'output', {})\n"
        "except stainadapt.PluginError as e:\n    print('refused:', e)\n"
    )
    result = _run(env, code, module=False)
    assert "refused:" in result.stdout and "disabled" in result.stdout
