#!/usr/bin/env bash
# Fails, naming FILE:LINE, when a file includes a header of a library its CMake target does not
# depend on (a back-edge in the layers; scripts/check_layers.py says how). Run by CTest
# (layers.check) in every test run.
# Usage: bash scripts/check-layers.sh [BUILD_DIR [SOURCE_DIR]]   (default: build, this tree)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-${BUILD_DIR:-$root/build}}"
if [ ! -d "$build/.cmake/api/v1/reply" ]; then
  echo "check-layers: $build is not a configured fjord build: run bash scripts/build.sh first" >&2
  exit 2
fi
exec python3 "$root/scripts/check_layers.py" --build "$build" ${2:+--source "$2"}
