#!/usr/bin/env bash
# CPU training-step cost of activation recomputation (issue 19, train.recompute: BLOCK against NONE),
# GPT-2 and Llama shapes, side by side in one run: the runs alternate NONE, BLOCK, NONE, BLOCK... so
# load from other processes falls on both. Prints median ms/step, the ratio (goal: BLOCK at most
# 1.4x NONE) and the activation bytes of each from `fjord plan` (the arena's activation term).
#
# usage: tests/bench/recompute_step.sh [--steps N] [--threads N] [--rounds N] [--build DIR]
#   --build DIR  a built fjord tree (default build-cpu; the script does not build)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
steps=8 threads=2 rounds=2 build=build-cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--threads N] [--rounds N] [--build DIR]" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}
fjord="$repo/$build/bin/fjord"
[ -x "$fjord" ] || { echo "no $fjord: build first (BUILD_DIR=$build bash scripts/build.sh)" >&2; exit 2; }
work=$(mktemp -d /tmp/fjord-recompute-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
head -c 400000 /dev/urandom | base64 > "$work/corpus.txt"
"$fjord" prep --input "$work/corpus.txt" --out "$work/data" >/dev/null

T=256 B=4
gpt2="model { n_layer: 6 n_head: 8 n_embd: 256 seq_len: $T vocab_size: 256 dtype: FP32 }"
llama="model { arch: LLAMA n_layer: 6 n_head: 8 n_kv_head: 2 n_embd: 256 intermediate_size: 768 seq_len: $T
        vocab_size: 256 rope_theta: 500000 dtype: FP32 }"
median() { "$py" -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.2f}")'; }
declare -A ms
for name in gpt2 llama; do
  for mode in NONE BLOCK; do
    cat > "$work/$name-$mode.textproto" <<JOB
${!name}
train { micro_batch: $B steps: $((steps + 2)) lr: 1e-4 threads: $threads log_every: 1000 recompute: $mode }
data { train: "$work/data/train_*.bin" }
run_dir: "$work/run-$name-$mode"
JOB
    : > "$work/ms-$name-$mode"
  done
  for round in $(seq "$rounds"); do
    for mode in NONE BLOCK; do
      rm -rf "$work/run-$name-$mode"
      OMP_NUM_THREADS=$threads "$fjord" train "$work/$name-$mode.textproto" --quiet >/dev/null
      # Skip the first 2 steps (page faults, warm-up).
      "$py" -c 'import json,sys; print("\n".join(str(json.loads(l)["ms"]) for l in open(sys.argv[1]).readlines()[2:]))' \
        "$work/run-$name-$mode/metrics.jsonl" >> "$work/ms-$name-$mode"
    done
  done
  for mode in NONE BLOCK; do ms[$name-$mode]=$(median < "$work/ms-$name-$mode"); done
done
act() { "$fjord" plan "$work/$1-$2.textproto" --ranks 1 --device cpu | awk '$1 == "activations" {print $3}'; }
echo "# CPU training step, train.recompute BLOCK vs NONE: 6 layers, n_embd 256, seq_len $T, vocab 256, micro_batch $B,"
echo "# fp32, $threads threads; $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;"
echo "# median of $rounds x $steps steps after 2 warm-up steps per run, runs alternating NONE and BLOCK"
printf "| %-6s | %10s | %10s | %12s | %18s | %18s |\n" model "NONE ms" "BLOCK ms" "BLOCK/NONE" "NONE activations" "BLOCK activations"
for name in gpt2 llama; do
  printf "| %-6s | %10s | %10s | %12s | %14s GiB | %14s GiB |\n" "$name" "${ms[$name-NONE]}" "${ms[$name-BLOCK]}" \
    "$("$py" -c "print(f'{${ms[$name-BLOCK]}/${ms[$name-NONE]}:.3f}')")" "$(act "$name" NONE)" "$(act "$name" BLOCK)"
done
