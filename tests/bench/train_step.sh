#!/usr/bin/env bash
# CPU training-step benchmark of the foundation issue: fjord vs llm.c's train_gpt2.c vs PyTorch
# eager, same config, same machine, same run. Prints a table of median ms/step and ratios.
#
# usage: tests/bench/train_step.sh [--llmc DIR] [--steps N] [--threads N]
#   --llmc DIR   a checkout of llm.c (not part of this repo); its train_gpt2.c is built with
#                llm.c's own flags (-Ofast -march=native -fopenmp) and run on the same config
#   PyTorch runs when `python3 -c "import torch"` works (Debian: python3-torch).
# Needs python3 with numpy to write the inputs. Builds fjord first (scripts/build.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
llmc="" steps=30 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --llmc) llmc=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--llmc DIR] [--steps N] [--threads N]" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}  # Debian's python3 (numpy, python3-torch), not a pyenv shim
L=4 H=4 C=256 T=64 V=50257 B=4
work=$(mktemp -d /tmp/fjord-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$repo/scripts/build.sh" >/dev/null
"$py" "$repo/tests/bench/llmc_inputs.py" "$work" --layers $L --heads $H --embd $C --seq-len $T --vocab $V

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.2f}")'; }

cat > "$work/job.textproto" <<JOB
model { n_layer: $L n_head: $H n_embd: $C seq_len: $T vocab_size: $V }
train { micro_batch: $B steps: $steps lr: 1e-4 weight_decay: 0 threads: $threads log_every: 1000 }
data { train: "$work/dev/data/tinyshakespeare/tiny_shakespeare_train.bin" }
run_dir: "$work/fjord_run"
JOB
OMP_NUM_THREADS=$threads "$repo/build/bin/fjord" train "$work/job.textproto" --quiet
# Skip the first 3 steps (page faults, BLAS warm-up), as for the others.
fjord_ms=$(python3 -c 'import json,sys; print("\n".join(str(json.loads(l)["ms"]) for l in open(sys.argv[1]).readlines()[3:]))' \
  "$work/fjord_run/metrics.jsonl" | median)

llmc_ms="-"
if [ -n "$llmc" ]; then
  src="$llmc/train_gpt2.c"
  [ -f "$src" ] || { echo "no train_gpt2.c in $llmc" >&2; exit 2; }
  gcc -Ofast -Wno-unused-result -march=native -fopenmp -DOMP -I"$llmc" "$src" -lm -lgomp -o "$work/train_gpt2"
  llmc_ms=$(cd "$work" && OMP_NUM_THREADS=$threads ./train_gpt2 | sed -n 's/^step \([0-9]*\): train loss .* (took \(.*\) ms)/\1 \2/p' \
    | awk '$1 >= 3 {print $2}' | median)
fi

torch_ms="-" torch_version=""
if "$py" -c "import torch" 2>/dev/null; then
  out=$("$py" "$repo/tests/bench/torch_cpu_step.py" --layers $L --heads $H --embd $C --seq-len $T --vocab $V --batch $B \
        --threads $threads --steps $((steps - 3)))
  torch_ms=$(echo "$out" | sed -n 's/.*median_ms \([0-9.]*\).*/\1/p')
  torch_version=$(echo "$out" | awk '{print $2}')
fi

ratio() { [ "$2" = "-" ] && echo "-" || python3 -c "print(f'{$1/$2:.3f}')"; }
echo "# CPU training step: n_layer $L, n_head $H, n_embd $C, seq_len $T, vocab $V, micro_batch $B, $threads threads"
echo "# $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; median of steps 4..$steps"
printf "| %-22s | %12s | %18s |\n" "trainer" "ms/step" "fjord / trainer"
printf "| %-22s | %12s | %18s |\n" "fjord" "$fjord_ms" "1.000"
printf "| %-22s | %12s | %18s |\n" "llm.c train_gpt2.c" "$llmc_ms" "$(ratio "$fjord_ms" "$llmc_ms")"
printf "| %-22s | %12s | %18s |\n" "PyTorch $torch_version eager" "$torch_ms" "$(ratio "$fjord_ms" "$torch_ms")"
