#!/usr/bin/env bash
# Data-parallel scaling on the CPU training-step benchmark config (n_layer 4, n_head 4, n_embd
# 256, seq_len 64, vocab 50257, micro_batch 4 per rank): np=1 against np=2 on this machine, in
# one run. Prints step time, tokens/s, exposed communication (time after backward spent waiting
# for gradient reduction, from metrics.jsonl) and scaling efficiency.
#
# usage: tests/bench/scaling.sh [--steps N] [--np "1 2"] [--set PATH=VALUE]...
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
steps=30 nps="1 2" sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --np) nps=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    *) echo "usage: $0 [--steps N] [--np \"1 2\"] [--set PATH=VALUE]..." >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d /tmp/fjord-scaling.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$repo/scripts/build.sh" >/dev/null
"$py" "$repo/tests/bench/llmc_inputs.py" "$work" --layers 4 --heads 4 --embd 256 --seq-len 64 --vocab 50257
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cores=$(nproc)
echo "# data-parallel scaling, $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; median of steps 4..$steps"
printf "| %3s | %7s | %10s | %10s | %17s | %13s | %10s |\n" np threads "ms/step" "tok/s" "exposed comm ms" "exposed share" efficiency
base=""
for np in $nps; do
  threads=$(( cores / np > 0 ? cores / np : 1 ))
  cat > "$work/job.textproto" <<JOB
model { n_layer: 4 n_head: 4 n_embd: 256 seq_len: 64 vocab_size: 50257 }
train { micro_batch: 4 steps: $steps lr: 1e-4 weight_decay: 0 threads: $threads log_every: 1000 tensorboard: false }
data { train: "$work/dev/data/tinyshakespeare/tiny_shakespeare_train.bin" }
run_dir: "$work/run_np$np"
JOB
  mpirun -np "$np" --oversubscribe --bind-to none "$repo/build/bin/fjord" train "$work/job.textproto" --quiet "${sets[@]}"
  read -r ms tps comm < <("$py" - "$work/run_np$np/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][3:]
print(statistics.median(r["ms"] for r in rows), statistics.median(r["tokens_per_s"] for r in rows),
      statistics.median(r["exposed_comm_ms"] for r in rows))
PY
)
  [ -z "$base" ] && base=$tps
  "$py" -c "
ms, tps, comm, base, np = $ms, $tps, $comm, $base, $np
print(f'| {np:3d} | {$threads:7d} | {ms:10.1f} | {tps:10.0f} | {comm:17.1f} | {100*comm/ms:12.1f}% | {tps/(np*base):10.3f} |')"
done
