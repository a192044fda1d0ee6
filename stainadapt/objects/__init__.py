"""Glomerulus objects: instances, outlines, measurements, GeoJSON and CSV.

What ``stainadapt predict --instances`` and ``stainadapt evaluate --instances`` use:

* :mod:`.instances`: binary mask -> objects (components, specks, holes, watershed
  split of touching glomeruli, measurements); :func:`label_instances` for label images;
* :mod:`.geometry`: exact pixel-edge outlines as closed, RFC 7946-oriented rings;
* :mod:`.tiled`: the same objects for tiled mask TIFFs larger than memory (band
  labelling with a union-find across band borders, then one component at a time);
* :mod:`.writers`: QuPath GeoJSON, per-image CSV, ``summary.csv``.

See docs/objects.md for the options, properties and columns.
"""

from __future__ import annotations

from .instances import GlomerulusObject, InstanceOptions, label_instances, objects_from_arrays
from .tiled import objects_from_tiff
from .writers import feature_collection, read_summary_row, write_csv, write_geojson, write_summary

__all__ = [
    "GlomerulusObject",
    "InstanceOptions",
    "feature_collection",
    "label_instances",
    "objects_from_arrays",
    "objects_from_tiff",
    "read_summary_row",
    "write_csv",
    "write_geojson",
    "write_summary",
]
