"""Collect the pytest-benchmark suites here, which are named ``bench_*.py``.

``python -m pytest benchmarks/ --benchmark-only`` runs them; the repository's own test run
(``testpaths = ["tests"]``) never loads this file, so it collects no benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
