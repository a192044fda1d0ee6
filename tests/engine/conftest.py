"""Shared fixtures of the engine tests."""

import pytest

from stainadapt.testing import make_domain


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """A tiny labelled source and target domain (5 images of 96 px each)."""
    root = tmp_path_factory.mktemp("domains")
    return make_domain(root / "s", "source", n=5), make_domain(root / "t", "target", n=5)
