"""Data layer: readers, domain folders, crops, augmentation and synthetic renal tissue.

Submodules are imported on demand (``from stainadapt.data.io import read_image``) so
that importing the package pulls in neither torch nor kornia.
"""
