"""Example stainadapt plugin package (see README.md beside this folder)."""
