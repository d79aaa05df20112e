#!/usr/bin/env bash
# CPU training-step benchmark of the foundation issue: fjord vs llm.c's train_gpt2.c vs PyTorch
# eager, same config, same machine, same run. Prints a table of median ms/step and ratios.
#
# usage: tests/bench/train_step.sh [--llmc DIR] [--steps N] [--threads N] [--energy [--pairs N]]
#   --llmc DIR   a checkout of llm.c (not part of this repo); its train_gpt2.c is built with
#                llm.c's own flags (-Ofast -march=native -fopenmp) and run on the same config
#   --energy     instead: the overhead of energy measurement (job spec `energy`) on the same step,
#                fjord with energy.measure false against true with a counter read every step
#                (window_steps 1, a powercap tree of two packages in a temporary directory: this
#                machine may have none), N pairs of runs alternating off/on (default 3)
# BUILD_DIR (default build) names the build tree to build and run, as scripts/build.sh does.
#   PyTorch runs when `python3 -c "import torch"` works (Debian: python3-torch).
# Needs python3 with numpy to write the inputs. Builds fjord first (scripts/build.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
llmc="" steps=30 threads=2 energy=0 pairs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --llmc) llmc=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --energy) energy=1; shift ;;
    --pairs) pairs=$2; shift 2 ;;
    *) echo "usage: $0 [--llmc DIR] [--steps N] [--threads N] [--energy [--pairs N]]" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}  # Debian's python3 (numpy, python3-torch), not a pyenv shim
L=4 H=4 C=256 T=64 V=50257 B=4
work=$(mktemp -d /tmp/fjord-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
build_dir=${BUILD_DIR:-build}
bash "$repo/scripts/build.sh" >/dev/null
"$py" "$repo/tests/bench/llmc_inputs.py" "$work" --layers $L --heads $H --embd $C --seq-len $T --vocab $V

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.2f}")'; }

cat > "$work/job.textproto" <<JOB
model { n_layer: $L n_head: $H n_embd: $C seq_len: $T vocab_size: $V }
train { micro_batch: $B steps: $steps lr: 1e-4 weight_decay: 0 threads: $threads log_every: 1000 }
data { train: "$work/dev/data/tinyshakespeare/tiny_shakespeare_train.bin" }
run_dir: "$work/fjord_run"
JOB
fjord="$repo/$build_dir/bin/fjord"
# Skip the first 3 steps (page faults, BLAS warm-up), as for the others.
step_ms() { python3 -c 'import json,sys; print("\n".join(str(json.loads(l)["ms"]) for l in open(sys.argv[1]).readlines()[3:]))' "$1"; }

if [ "$energy" = 1 ]; then
  # Two RAPL packages laid out as the kernel does; their counters do not move (the read is the cost).
  for z in 0 1; do
    mkdir -p "$work/powercap/intel-rapl:$z"
    echo "package-$z" >"$work/powercap/intel-rapl:$z/name"
    echo 262143328850 >"$work/powercap/intel-rapl:$z/max_energy_range_uj"
    echo $((123456789 + z)) >"$work/powercap/intel-rapl:$z/energy_uj"
  done
  : >"$work/off.ms"
  : >"$work/on.ms"
  : >"$work/off.run"
  : >"$work/on.run"
  for i in $(seq "$pairs"); do
    for mode in off on; do
      set_energy="energy.measure=false"
      [ $mode = on ] && set_energy="energy.measure=true --set energy.window_steps=1 --set energy.powercap_root=$work/powercap"
      t0=$(date +%s%N)
      # shellcheck disable=SC2086
      OMP_NUM_THREADS=$threads "$fjord" train "$work/job.textproto" --quiet --set $set_energy
      echo "$((($(date +%s%N) - t0) / 1000000))" >>"$work/$mode.run"
      step_ms "$work/fjord_run/metrics.jsonl" >>"$work/$mode.ms"
    done
  done
  grep -q energy_j "$work/fjord_run/metrics.jsonl" || { echo "energy was not measured in the 'on' runs" >&2; exit 1; }
  # The counters are read and summed between steps, outside the step's own timer (ms): the whole
  # run's wall time (setup included, the same in both) is what shows their cost.
  off_ms=$(median <"$work/off.ms") on_ms=$(median <"$work/on.ms")
  off_run=$(median <"$work/off.run") on_run=$(median <"$work/on.run")
  echo "# CPU training step with and without energy measurement: n_layer $L, n_head $H, n_embd $C, seq_len $T,"
  echo "# vocab $V, micro_batch $B, $threads threads; $pairs pairs of runs, off/on alternating, median of steps 4..$steps"
  echo "# $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  printf "| %-52s | %10s | %10s | %10s | %10s |\n" "fjord" "ms/step" "on / off" "ms/run" "on / off"
  printf "| %-52s | %10s | %10s | %10s | %10s |\n" "energy.measure: false" "$off_ms" "1.000" "$off_run" "1.000"
  printf "| %-52s | %10s | %10s | %10s | %10s |\n" "energy.measure: true, window_steps 1, 2 RAPL counters" \
    "$on_ms" "$(python3 -c "print(f'{$on_ms/$off_ms:.4f}')")" "$on_run" "$(python3 -c "print(f'{$on_run/$off_run:.4f}')")"
  exit 0
fi

OMP_NUM_THREADS=$threads "$fjord" train "$work/job.textproto" --quiet
fjord_ms=$(step_ms "$work/fjord_run/metrics.jsonl" | median)

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
