#!/usr/bin/env bash
# Installs missing packages, configures and builds fjord into ${BUILD_DIR:-build}.
# Extra arguments go to cmake's configure step (e.g. -DFJORD_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
log="$build_dir/build.log"
if ! cmake --build "$build_dir" -j "$(nproc)" >"$log" 2>&1; then
  grep -E 'error|Error' "$log" | head -40 >&2
  echo "fjord: build failed; full log in $log" >&2
  exit 1
fi
