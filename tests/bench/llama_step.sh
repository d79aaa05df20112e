#!/usr/bin/env bash
# CPU training-step benchmark of issue 18: fjord's Llama (model.arch LLAMA) against PyTorch eager
# on the same config (4 layers, 256 wide, GQA 8:2, SwiGLU 768, vocab 32000, T 256), the same threads,
# in the same run. Prints a table of median ms/step and the ratio (goal: fjord at most 0.5x).
#
# usage: tests/bench/llama_step.sh [--steps N] [--threads N] [--build DIR]
#   --build DIR  a built fjord tree (default build-cpu; the script does not build)
#   PyTorch runs when `python3 -c "import torch"` works (Debian: python3-torch), else its row is "-".
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
steps=10 threads=2 build=build-cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--threads N] [--build DIR]" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}
L=4 H=8 KV=2 C=256 I=768 T=256 V=32000 B=4
fjord="$repo/$build/bin/fjord"
[ -x "$fjord" ] || { echo "no $fjord: build first (BUILD_DIR=$build bash scripts/build.sh)" >&2; exit 2; }
work=$(mktemp -d /tmp/fjord-llama-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$py" "$repo/tests/bench/llmc_inputs.py" "$work" --layers $L --heads $H --embd $C --seq-len $T --vocab $V >/dev/null

median() { "$py" -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.2f}")'; }

cat > "$work/job.textproto" <<JOB
model { arch: LLAMA n_layer: $L n_head: $H n_kv_head: $KV n_embd: $C intermediate_size: $I seq_len: $T
        vocab_size: $V rope_theta: 500000 dtype: FP32 }
train { micro_batch: $B steps: $((steps + 3)) lr: 1e-4 weight_decay: 0 threads: $threads log_every: 1000 }
data { train: "$work/dev/data/tinyshakespeare/tiny_shakespeare_train.bin" }
run_dir: "$work/fjord_run"
JOB
OMP_NUM_THREADS=$threads "$fjord" train "$work/job.textproto" --quiet
# Skip the first 3 steps (page faults, BLAS warm-up), as for PyTorch.
fjord_ms=$("$py" -c 'import json,sys; print("\n".join(str(json.loads(l)["ms"]) for l in open(sys.argv[1]).readlines()[3:]))' \
  "$work/fjord_run/metrics.jsonl" | median)

torch_ms="-" torch_version=""
if "$py" -c "import torch" 2>/dev/null; then
  out=$("$py" "$repo/tests/bench/torch_llama.py" --layers $L --heads $H --kv-heads $KV --embd $C --intermediate $I \
        --seq-len $T --vocab $V --batch $B --threads $threads --steps "$steps")
  torch_ms=$(echo "$out" | sed -n 's/.*median_ms \([0-9.]*\).*/\1/p')
  torch_version=$(echo "$out" | awk '{print $2}')
fi

ratio() { [ "$2" = "-" ] && echo "-" || "$py" -c "print(f'{$1/$2:.3f}')"; }
echo "# CPU training step, Llama: n_layer $L, n_head $H, n_kv_head $KV, n_embd $C, intermediate $I, seq_len $T,"
echo "# vocab $V, micro_batch $B, $threads threads; $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'),"
echo "# $(nproc) cores; median of $steps steps after 3 warm-up steps"
printf "| %-22s | %12s | %18s |\n" "trainer" "ms/step" "fjord / trainer"
printf "| %-22s | %12s | %18s |\n" "fjord (LLAMA)" "$fjord_ms" "1.000"
printf "| %-22s | %12s | %18s |\n" "PyTorch $torch_version eager" "$torch_ms" "$(ratio "$fjord_ms" "$torch_ms")"
