#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (CUDA code too when nvcc is present),
# then runs every test through CTest. GPU tests skip where no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh "$@"
cd "${BUILD_DIR:-build}"
ctest -j "$(nproc)" --output-on-failure --timeout 900
