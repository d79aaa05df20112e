#!/usr/bin/env bash
# Fails, naming FILE:LINE, when a file includes a header of a library its CMake target does not
# depend on (a back-edge in the layers; scripts/check_layers.py says how). Run by CTest
# (layers.check) in every test run.
# Usage: bash scripts/check-layers.sh [BUILD_DIR [SOURCE_DIR]]   (default: build, this tree)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-${BUILD_DIR:-$root/build}}"
if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "check-layers: $build is not a configured fjord build: run bash scripts/build.sh first" >&2
  exit 2
fi
# CMake answers the file-API query (which CMakeLists.txt writes) at the next generation: a build
# configured once has none yet, so regenerate (cached, a few seconds).
if [ ! -d "$build/.cmake/api/v1/reply" ]; then
  mkdir -p "$build/.cmake/api/v1/query/client-fjord"
  touch "$build/.cmake/api/v1/query/client-fjord/codemodel-v2"
  cmake "$build" >/dev/null
fi
exec python3 "$root/scripts/check_layers.py" --build "$build" ${2:+--source "$2"}
