#!/usr/bin/env bash
# Run HERE (the CPU machine, which reaches PyPI) before a GPU run: fills .whl/ with
# what the GPU machine lacks. It has torch, timm, typer, rich, safetensors, tifffile,
# scikit-image, pytest (/work/.library/device/KINDS.md) but no PyPI, no kornia and no
# stainadapt. Python there is 3.12, so the compiled kornia_rs is fetched for cp312.
# The run tool carries .whl/ when a call names it in `carry` (about 8 MB of 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0
ls -l .whl
du -sh .whl
