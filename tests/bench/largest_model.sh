#!/usr/bin/env bash
# The largest model that trains, per rank count and ZeRO stage, in a fixed amount of memory,
# measured (issue 19): every run is confined to a memory cgroup of --cap-gib GiB (mpirun, its
# daemons and all ranks together, as Slurm's cgroup plugin or a container confines a job), so a
# plan that under-counts ends in the kernel's OOM killer, not in a pass.
#
# For each np and stage: the largest model.n_layer (fixed width below) that `fjord plan --ranks np
# --device cpu` admits inside the cgroup (the plan sees the cgroup's limit: runtime/device/device.h
# AvailableHostMemory), then `fjord train` of that model for 2 steps under mpirun in the cgroup; if
# it does not train (refused by a rank's own plan, or killed), one layer less, up to 3 times.
# Prints the planned and the trained sizes, the plan's total per rank, the largest peak RSS of a rank
# (getrusage) and the cgroup's high-water mark (which counts page cache too, so it reaches the cap
# whenever files were read) against the cap. A run ends at step 2 with its checkpoint, as real jobs
# do, so the checkpoint's own memory counts.
#
# usage: tests/bench/largest_model.sh [--cap-gib G] [--np "1 2 4"] [--stages "0 1 2 3"]
#                                     [--build DIR] [--recompute NONE|BLOCK]
# Needs root and a memory cgroup controller (v1 or v2); says so and exits 77 otherwise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cap_gib=2 nps="1 2 4" stages="0 1 2 3" build=build-cpu recompute=NONE
usage() {
  echo "usage: $0 [--cap-gib G] [--np \"1 2 4\"] [--stages \"0 1 2 3\"] [--build DIR] [--recompute NONE|BLOCK]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --cap-gib) cap_gib=$2; shift 2 ;;
    --np) nps=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --recompute) recompute=$2; shift 2 ;;
    *) usage ;;
  esac
done
py=${PYTHON:-/usr/bin/python3}
fjord="$repo/$build/bin/fjord"
[ -x "$fjord" ] || { echo "no $fjord: build first (BUILD_DIR=$build bash scripts/build.sh)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "largest_model.sh: needs root to make a memory cgroup" >&2; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cap=$("$py" -c "print(int($cap_gib * (1 << 30)))")

# The cgroup: v2 where the unified hierarchy has the memory controller, else v1's memory hierarchy.
cg=""
v2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
v1=$(awk '$9 == "cgroup" && $NF ~ /(^|,)memory(,|$)/ {print $5; exit}' /proc/self/mountinfo)
if [ -n "$v2" ] && grep -qw memory "$v2/cgroup.controllers" 2>/dev/null &&
   grep -qw memory "$v2/cgroup.subtree_control" 2>/dev/null; then
  cg="$v2/fjord-largest-$$"; mkdir "$cg"
  echo "$cap" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
  peak_file=memory.peak
  reset_peak() {  # v2's memory.peak cannot be reset on older kernels: a fresh cgroup (same limit)
    for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2; rmdir "$cg"; mkdir "$cg"
    echo "$cap" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
  }
elif [ -n "$v1" ]; then
  cg="$v1/fjord-largest-$$"; mkdir "$cg"
  echo "$cap" > "$cg/memory.limit_in_bytes"
  echo "$cap" > "$cg/memory.memsw.limit_in_bytes" 2>/dev/null || true  # no swap either
  peak_file=memory.max_usage_in_bytes
  reset_peak() { echo 0 > "$cg/memory.max_usage_in_bytes"; }
else
  echo "largest_model.sh: no memory cgroup controller here (neither v1 nor v2)" >&2
  exit 77
fi
work=$(mktemp -d /tmp/fjord-largest.XXXXXX)
cleanup() {
  # Everything still in the cgroup was started by this script.
  for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  sleep 0.2
  rmdir "$cg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# in_cgroup CMD...: runs CMD inside the cgroup.
in_cgroup() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"; }

"$py" - "$work/tokens.bin" <<'PY'
import struct, sys, random
random.seed(1337)
n = 1 << 16
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(8192) for _ in range(n))))
PY
rss_wrapper='
import os, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(os.path.join(sys.argv[1], "rss.%d" % os.getpid()), "w") as f:
    f.write("%d\n" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)
'
job() {  # job LAYERS
  cat <<JOB
model { n_layer: $1 n_head: 8 n_embd: 512 seq_len: 64 vocab_size: 8192 dtype: FP32 }
train { micro_batch: 1 steps: 2 lr: 1e-4 threads: 1 log_every: 1000 tensorboard: false recompute: $recompute }
data { train: "$work/tokens.bin" }
JOB
}
plan_total() {  # plan_total LAYERS NP STAGE: the plan's total per rank, empty when it does not fit
  job "$1" > "$work/plan.textproto"
  if in_cgroup "$fjord" plan "$work/plan.textproto" --ranks "$2" --device cpu --set "parallel.zero_stage=$3" \
       >"$work/plan.out" 2>&1; then
    awk '$1 == "total" {print $2}' "$work/plan.out"
  fi
}

echo "# largest model that trains in a $cap_gib GiB memory cgroup (all ranks and mpirun together): n_embd 512,"
echo "# n_head 8, seq_len 64, vocab 8192, micro_batch 1, fp32, recompute $recompute, n_layer searched;"
echo "# $(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, cgroup $( [ "$peak_file" = memory.peak ] && echo v2 || echo v1)"
printf "| %2s | %5s | %15s | %15s | %10s | %14s | %14s | %14s | %s |\n" np stage "planned layers" "trained layers" params \
  "plan per rank" "peak RSS/rank" "cgroup peak" "not trained"
printf "|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
for np in $nps; do
  for s in $stages; do
    # The plan's largest n_layer: grow while it fits.
    L=0
    while [ -n "$(plan_total $((L + 1)) "$np" "$s")" ] && [ "$L" -lt 400 ]; do L=$((L + 1)); done
    planned=$L trained=0 misses="" total="" peak="" cgpeak=""
    for try in 1 2 3; do
      [ "$L" -ge 1 ] || break
      job "$L" > "$work/job.textproto"
      rm -rf "$work/run"
      reset_peak
      rm -f "$work"/rss.*
      # Each rank under a wrapper that writes its peak RSS (getrusage of its child) to rss.PID.
      if in_cgroup mpirun -np "$np" --oversubscribe --bind-to none "$py" -c "$rss_wrapper" "$work" \
           "$fjord" train "$work/job.textproto" --quiet \
           --set "run_dir=$work/run" --set "parallel.zero_stage=$s" >"$work/log" 2>&1; then
        trained=$L
        total=$(plan_total "$L" "$np" "$s")
        peak=$(cat "$work"/rss.* | sort -n | tail -1)
        cgpeak=$(cat "$cg/$peak_file")
        break
      fi
      if grep -q "nothing was allocated" "$work/log"; then why="refused"; else why="failed/killed"; fi
      misses="$misses $L:$why"
      L=$((L - 1))
    done
    params=$("$py" -c "L=$trained; C=512; V=8192; T=64; print(f'{(V*C + T*C + L*(12*C*C + 13*C) + 2*C)/1e6:.1f}M')")
    gib() { [ -n "$1" ] && "$py" -c "print(f'{$1/(1<<30):.2f} GiB')" || echo "-"; }
    printf "| %2s | %5s | %15s | %15s | %10s | %14s | %14s | %14s | %s |\n" "$np" "$s" "$planned" "$trained" "$params" \
      "$(gib "$total")" "$(gib "$peak")" "$(gib "$cgpeak")" "${misses:- }"
  done
done
