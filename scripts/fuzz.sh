#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang, AddressSanitizer and UBSan in their own build
# directory, runs each for SECONDS (default 60) over a fresh copy of its seed corpus, and prints
# one line per target: inputs tried, coverage (libFuzzer's cov: edges) and crashes. Exits 1 when a
# target crashed, leaked, timed out or ran out of memory, naming the saved input and how to rerun
# it; 2 when the build fails.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 120 fuzz_json fuzz_shard
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (targets run at once; default nproc).
# Each target's corpus, saved inputs and log are in FUZZ_BUILD_DIR/fuzz-runs/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${1:-60}"
shift $(( $# > 0 ? 1 : 0 ))
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
build_dir="${FUZZ_BUILD_DIR:-build-fuzz}"
[[ "$build_dir" = /* ]] || build_dir="$root/$build_dir"
jobs="${FUZZ_JOBS:-$(nproc)}"

if ! command -v clang++ >/dev/null || ! command -v clang >/dev/null; then
  echo "fuzz: libFuzzer needs clang and clang++ (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

mkdir -p "$build_dir"
# One run per build directory at a time (CTest runs from several build trees share build-fuzz).
exec 9>"$build_dir/.fuzz.lock"
flock 9
log="$build_dir/fuzz-build.log"
if ! { CC=clang CXX=clang++ cmake -S . -B "$build_dir" -DFJORD_FUZZ=ON -DFJORD_CUDA=OFF -DFJORD_TESTS=OFF \
         -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build "$build_dir" --target fjord_fuzz -j "$(nproc)"; } >"$log" 2>&1; then
  grep -E 'error|Error' "$log" | head -40 >&2 || true
  echo "fuzz: build failed; full log in $log" >&2
  exit 2
fi

targets=("$@")
if (( ${#targets[@]} == 0 )); then
  for src in tests/fuzz/fuzz_*.cc; do
    name="$(basename "$src" .cc)"
    # A target whose library this tree does not build (tests/fuzz/CMakeLists.txt) has no binary.
    if [[ -x "$build_dir/bin/$name" ]]; then targets+=("$name"); fi
  done
fi

runs_dir="$build_dir/fuzz-runs"
run_one() {
  local name="$1" work="$runs_dir/$1"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -r "tests/fuzz/corpus/$name/." "$work/corpus/"
  # OMP_NUM_THREADS: no target computes; one thread keeps OpenMP's pool out of the way.
  local rc=0
  OMP_NUM_THREADS=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$build_dir/bin/$name" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1 || rc=$?
  echo "$rc" >"$work/rc"
}

for name in "${targets[@]}"; do
  [[ -x "$build_dir/bin/$name" ]] || { echo "fuzz: no target $name in $build_dir/bin" >&2; exit 2; }
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
  run_one "$name" &
done
wait

failed=0
printf '%-26s %8s %10s %6s %8s\n' target seconds runs cov crashes
for name in "${targets[@]}"; do
  work="$runs_dir/$name"
  runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)"
  cov="$(grep -o ' cov: [0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)"
  crashes="$(find "$work/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' \) | wc -l)"
  rc="$(cat "$work/rc" 2>/dev/null || echo '?')"
  printf '%-26s %8s %10s %6s %8s\n' "$name" "$seconds" "${runs:-?}" "${cov:-?}" "$crashes"
  if [[ "$rc" != 0 ]] || (( crashes > 0 )); then
    failed=1
    {
      echo "fuzz: $name failed (exit $rc); log: $work/log"
      grep -E '^(==[0-9]+==ERROR|SUMMARY:|fuzz property failed|fjord: FATAL)|runtime error:' "$work/log" |
        head -5 || true
      for input in $(find "$work/artifacts" -type f); do
        echo "  input: $input"
        echo "  rerun: $build_dir/bin/$name $input"
      done
    } >&2
  fi
done
if (( failed )); then exit 1; fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crashes (corpora and logs in $runs_dir)"
