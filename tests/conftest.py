"""Shared fixtures. Tests are CPU-sized: tiny images, tiny models, few steps."""

from __future__ import annotations

import os

import pytest

# Two cores in CI: one thread per test process keeps runs predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def device():
    """CUDA when available, else CPU: the same tests run on both."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """A tiny labelled source and target domain (5 images of 96 px each)."""
    from stainadapt.testing import make_domain

    root = tmp_path_factory.mktemp("domains")
    return make_domain(root / "s", "source", n=5), make_domain(root / "t", "target", n=5)
