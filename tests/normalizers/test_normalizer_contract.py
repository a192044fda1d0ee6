"""Every registered normaliser passes the shared contract (parametrised by the registry)."""

from __future__ import annotations

import pytest

from stainadapt.registry import plugin_names
from stainadapt.testing import check_normalizer


@pytest.mark.parametrize("name", plugin_names("normalizers"))
def test_contract(name, device):
    check_normalizer(name, device=device)


def test_builtins_registered():
    assert {"macenko", "reinhard", "vahadane"} <= set(plugin_names("normalizers"))
