#!/usr/bin/env bash
# The main job on its embedded default: builds fjord, then generates a corpus, tokenizes it,
# trains a small GPT on it and samples from it. Extra arguments go to `fjord demo`
# (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/bin/fjord demo --dir runs/demo "$@"
