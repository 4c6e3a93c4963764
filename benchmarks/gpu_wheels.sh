#!/usr/bin/env bash
# Downloads into .whl/ the wheels gpu_check.sh installs on the GPU machine (CPython 3.12, x86-64
# Linux, no network there): xgrammar for the mask benchmark, and the test tools its image may lack,
# each with its pure dependencies and none of the image's own (torch, triton, transformers, numpy).
#
#     bash benchmarks/gpu_wheels.sh     # then: run(..., carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl \
  pytest pluggy iniconfig pytest-xdist execnet hypothesis attrs sortedcontainers pytest-benchmark py-cpuinfo \
  rapidfuzz marisa-trie lapx \
  xgrammar pydantic pydantic-core annotated-types typing-inspection
ls .whl
