"""benchmarks/device/run.sh: the GPU benchmark script (one call, all stages), on the CPU.

No GPU is needed to find the mistakes that would waste a GPU run's time budget: a
shell syntax error, a stage that no longer matches the CLI, a deadline that does not
cut stages. ``SA_DRY=1`` runs the same stages on the CPU with tiny sizes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device" / "run.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "SA_DRY": "1", "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=300)


def test_script_parses():
    for name in ("run.sh", "prepare.sh"):
        subprocess.run(["bash", "-n", str(SCRIPT.parent / name)], check=True)


def test_env_stage_reports_versions(tmp_path):
    r = _run(tmp_path, STAGES="env")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[env] rc=0" in r.stdout
    log = (tmp_path / "out" / "env.log").read_text()
    assert "stainadapt" in log and "kornia" in log


def test_deadline_skips_stages_without_time(tmp_path):
    r = _run(tmp_path, STAGES="smoke report", DEADLINE="5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[smoke] skipped" in r.stdout
    assert "[report-fp32] skipped" in r.stdout
    assert not (tmp_path / "out" / "smoke-run").exists()
