#!/usr/bin/env bash
# Download, here, the wheels a lent device machine lacks, into benchmarks/device_wheels/ (git-ignored),
# for benchmarks/device_check.sh to install there (nothing can be downloaded on that machine).
#
# The device image (/work/.library/device/KINDS.md) has python3 3.12 with torch 2.11+cu130, torchvision,
# pandas, scipy, pluggy, filelock, rich, numpy, requests, onnx and onnxruntime, but not pydantic (and its
# pydantic-core, annotated-types, typing-inspection) nor pytorchcv. typing-extensions is carried too, at a
# version pydantic accepts, in case the image's is older. Versions: the ones this project's venv runs.
# Usage: bash benchmarks/fetch_device_wheels.sh   (then carry benchmarks/device_wheels in the device call)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=benchmarks/device_wheels
PIP=${PIP:-python3 -m pip}
WHEELS=(
    "pydantic==2.14.4"
    "pydantic-core==2.50.5"
    "annotated-types==0.8.0"
    "typing-inspection==0.4.5"
    "typing-extensions==4.16.0"
    "pytorchcv==0.0.74"
)
rm -rf "$dest"
mkdir -p "$dest"
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dest" "${WHEELS[@]}"
ls -l "$dest"
