#!/usr/bin/env bash
# Exposed communication per ZeRO stage, and the cost of activation recomputation, on the CPU
# (issue 19): `fjord train` under mpirun at each --np, each parallel.zero_stage, with
# train.recompute NONE and BLOCK, side by side in one run. The runs of one np alternate through every
# (stage, recompute) pair, round after round, so the load of other processes falls on all of them.
#
# Per row: median ms/step, median exposed_comm_ms (metrics.jsonl: the time the step waited for
# communication the backward pass did not hide; see docs/ARCHITECTURE.md "Data parallelism" for
# what each stage counts), the exposed share of the step, BLOCK's ms/step and its ratio to NONE.
# Goals (issue 19): stage 3's exposed share below 15% where stage 0's is below 10%; BLOCK at most
# 1.4x NONE.
#
# The model is the data-parallel scaling config (tests/bench/scaling.sh: n_layer 4, n_head 4,
# n_embd 256, seq_len 64, vocab 50257, micro_batch 4 per rank, fp32) on random tokens.
#
# usage: tests/bench/zero_comm.sh [--np "2 4"] [--stages "0 1 2 3"] [--steps N] [--rounds N]
#                                 [--build DIR]
#   --build DIR  a built fjord tree (default build-cpu; the script does not build)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
nps="2 4" stages="0 1 2 3" steps=12 rounds=2 build=build-cpu
usage() { echo "usage: $0 [--np \"2 4\"] [--stages \"0 1 2 3\"] [--steps N] [--rounds N] [--build DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --np) nps=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ "$steps" -ge 4 ] 2>/dev/null || { echo "--steps must be at least 4 (the first 3 are warm-up)" >&2; exit 2; }
py=${PYTHON:-/usr/bin/python3}
fjord="$repo/$build/bin/fjord"
[ -x "$fjord" ] || { echo "no $fjord: build first (BUILD_DIR=$build bash scripts/build.sh)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d /tmp/fjord-zero-comm.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$py" - "$work/tokens.bin" <<'PY'
import struct, sys, random
random.seed(1337)
n = 1 << 18
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(50257) for _ in range(n))))
PY
cores=$(nproc)
median() { "$py" -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.2f}")'; }

echo "# ZeRO stages and recomputation on the CPU: n_layer 4, n_head 4, n_embd 256, seq_len 64, vocab 50257,"
echo "# micro_batch 4 per rank, fp32; $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $cores cores,"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg); median of $rounds x steps 4..$steps per cell, runs alternating"
printf "| %2s | %5s | %9s | %15s | %13s | %9s | %10s |\n" np stage "ms/step" "exposed comm ms" "exposed share" "BLOCK ms" "BLOCK/NONE"
printf "|---:|---:|---:|---:|---:|---:|---:|\n"
for np in $nps; do
  threads=$(( cores / np > 0 ? cores / np : 1 ))
  cat > "$work/job.textproto" <<JOB
model { n_layer: 4 n_head: 4 n_embd: 256 seq_len: 64 vocab_size: 50257 dtype: FP32 }
train { micro_batch: 4 steps: $steps lr: 1e-4 weight_decay: 0 threads: $threads log_every: 1000 tensorboard: false }
data { train: "$work/tokens.bin" }
JOB
  for s in $stages; do for r in NONE BLOCK; do : > "$work/ms-$s-$r"; : > "$work/comm-$s-$r"; done; done
  for round in $(seq "$rounds"); do
    for s in $stages; do
      for r in NONE BLOCK; do
        run="$work/run-$np-$s-$r"
        rm -rf "$run"
        if ! mpirun -np "$np" --oversubscribe --bind-to none "$fjord" train "$work/job.textproto" --quiet \
             --set "run_dir=$run" --set "parallel.zero_stage=$s" --set "train.recompute=$r" \
             >"$work/log" 2>&1; then
          echo "np $np stage $s recompute $r failed:" >&2
          tail -20 "$work/log" >&2
          exit 1
        fi
        "$py" - "$run/metrics.jsonl" "$work/ms-$s-$r" "$work/comm-$s-$r" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][3:]
with open(sys.argv[2], "a") as ms, open(sys.argv[3], "a") as comm:
    for r in rows:
        ms.write(f"{r['ms']}\n")
        comm.write(f"{r['exposed_comm_ms']}\n")
PY
      done
    done
  done
  for s in $stages; do
    ms=$(median < "$work/ms-$s-NONE")
    comm=$(median < "$work/comm-$s-NONE")
    block=$(median < "$work/ms-$s-BLOCK")
    "$py" -c "
ms, comm, block = $ms, $comm, $block
print(f'| $np | $s | {ms:9.1f} | {comm:15.1f} | {100*comm/ms:12.1f}% | {block:9.1f} | {block/ms:10.3f} |')"
  done
done
