#!/usr/bin/env bash
# The main job on its embedded default: builds fjord, then on ${FJORD_DEMO_RANKS:-2} ranks on
# localhost (Open MPI) generates a corpus, tokenizes it, trains a small GPT on it and samples
# from it. Extra arguments go to `fjord demo` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpirun -np "${FJORD_DEMO_RANKS:-2}" --oversubscribe --bind-to none \
  build/bin/fjord demo --dir runs/demo "$@"
