#!/usr/bin/env bash
# Build the offline wheel bundle for the air-gapped GPU host (Python 3.12, CUDA 13), which has
# CuPy, numba, pandas, pyarrow and scikit-learn but no Dask and no package index.
#
#   benchmarks/gpu_bundle.sh [DEST] [--cudf]        (DEST defaults to gpu-bundle/, git-ignored)
#
# DEST/part01 ... come from ../shared/gpu/wheel-parts.sh (the Dask stack and dask-cuda; with
# --cudf also the ~480 MB cudf stack); one more part holds the small packages gpu_vgm and its
# tests need beyond that (gpu_vgm itself travels as the working tree). Carry one part folder
# per device call, then run benchmarks/gpu_check.sh there.
set -euo pipefail
dest=${1:-gpu-bundle}
shift || true
here=$(cd "$(dirname "$0")/.." && pwd)
parts_script=${WHEEL_PARTS:-$here/../shared/gpu/wheel-parts.sh}
rm -rf "$dest"
bash "$parts_script" "$dest" "$@"
last=$(ls -d "$dest"/part* | sort | tail -n 1)
n=$((10#${last##*part} + 1))
extra=$(printf '%s/part%02d' "$dest" "$n")
mkdir -p "$extra"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$extra" \
  cloudpickle toolz fsspec msgpack psutil sortedcontainers click pyyaml jinja2 markupsafe \
  packaging urllib3 tqdm importlib-metadata zipp pytest pluggy iniconfig hypothesis attrs \
  threadpoolctl nvidia-ml-py
du -sh "$dest"/part* | sed "s#$dest/##"
