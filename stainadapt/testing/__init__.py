"""Contract checks that plugin authors run on their own plugins.

Every built-in plugin passes the same checks through registry-parametrised tests, so a
third-party plugin that passes them works wherever a built-in does::

    from stainadapt.testing import check_discriminator
    check_discriminator("my_disc:depth=3")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "check_backbone",
    "check_discriminator",
    "check_normalizer",
    "fill_hub_cache",
    "make_domain",
    "write_pyramidal_tiff",
    "write_svs",
]

_WHERE = {
    "check_backbone": "stainadapt.testing.backbones",
    "fill_hub_cache": "stainadapt.testing.backbones",
    "check_discriminator": "stainadapt.testing.discriminators",
    "check_normalizer": "stainadapt.testing.normalizers",
    "make_domain": "stainadapt.testing.data",
    "write_pyramidal_tiff": "stainadapt.testing.slides",
    "write_svs": "stainadapt.testing.slides",
}


def __getattr__(name: str) -> Any:  # lazy: importing stainadapt.testing pulls in no torch
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(name)
