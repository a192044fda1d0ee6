"""``__version__``: the installed distribution's version.

A module of its own, below everything, so that the modules that stamp the version into
what they write (run folders, exported models, synthetic data sets) need not import the
package facade, which sits above the engine.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("stainadapt")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
