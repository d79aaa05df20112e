#!/usr/bin/env bash
# Installs missing packages, configures and builds fjord into ${BUILD_DIR:-build}.
# Extra arguments go to cmake's configure step (e.g. -DFJORD_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
log="$build_dir/build.log"
# Progress on stderr every 10% (a first build takes minutes); the compiler's output goes to the log.
echo "fjord: building in $build_dir with $(nproc) jobs (full log: $log)" >&2
set +e
cmake --build "$build_dir" -j "$(nproc)" 2>&1 | tee "$log" |
  awk '/^\[ *[0-9]+%\]/ { s = $0; sub(/^\[ */, "", s); sub(/%\].*/, "", s); p = s + 0;
         if (p >= next_p) { printf "fjord: build %d%%\n", p > "/dev/stderr"; fflush("/dev/stderr"); next_p = p - p % 10 + 10 } }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  grep -E 'error|Error' "$log" | head -40 >&2
  echo "fjord: build failed; full log in $log" >&2
  exit 1
fi
