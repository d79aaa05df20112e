#!/usr/bin/env bash
# Error paths that no test reaches: builds the CPU configuration with gcov instrumentation in
# build-cov/, runs the whole CTest suite there, and lists every line of runtime/, launcher/,
# collectives/ and common/ that reports an error (a Status constructor, "error:", "warning:",
# a message to stderr) and never ran. The house rule is that every such path has a test; what
# this lists is either a missing test or a path only a system failure reaches (say which in the
# commit that leaves it).
#
# usage: bash scripts/coverage.sh [BUILD_DIR]     (default build-cov; about 15 min on 2 cores)
# Output: BUILD_DIR/uncovered-errors.txt, one `file:line: source` per line, and a count per file.
# Line numbers come from an -O2 build, so a line may be off by one or two. A line reached only in
# a process that ends by _exit, abort or MPI_Abort (a rank refusing under mpirun, a forked child
# before exec) shows as never run, because gcov writes its counts at a normal exit: grep tests/
# for the message before writing a test for it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath -m "${1:-$repo/build-cov}")
cmake -S "$repo" -B "$build" -DFJORD_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS=--coverage -DCMAKE_EXE_LINKER_FLAGS=--coverage >/dev/null
cmake --build "$build" -j"$(nproc)"
find "$build" -name '*.gcda' -delete
(cd "$build" && ctest -j"$(nproc)" --timeout 900 >"$build/ctest-coverage.log" 2>&1) ||
  echo "coverage: some tests failed (see $build/ctest-coverage.log); the list below still holds for those that ran"

out=$build/uncovered-errors.txt
gcov_dir=$(mktemp -d)
trap 'rm -rf "$gcov_dir"' EXIT
for dir in runtime launcher collectives common; do
  [ -d "$build/$dir" ] || continue
  mkdir -p "$gcov_dir/$dir"
  while IFS= read -r gcda; do
    # gcov names sources relative to the directory it runs in; run it in the object's build tree.
    (cd "$build/$dir" && gcov -o "$(dirname "$gcda")" "$gcda" >/dev/null 2>&1 && mv -f ./*.gcov "$gcov_dir/$dir"/ 2>/dev/null) || true
  done < <(find "$build/$dir" -name '*.gcda')
done
for f in "$gcov_dir"/*/*.gcov; do
  dir=$(basename "$(dirname "$f")")
  src=$(head -1 "$f" | sed 's/.*Source://')
  case "$src" in /*) ;; *) src=$build/$dir/$src ;; esac
  src=$(realpath -m --relative-to="$repo" "$src")
  case "$src" in runtime/*|launcher/*|collectives/*|common/*) ;; *) continue ;; esac
  case "$src" in *.pb.*) continue ;; esac
  # gcov lines are "COUNT:LINE:SOURCE"; ##### marks a line that never ran.
  awk -v S="$src" '{
    split($0, a, ":")
    if (a[1] ~ /#####/ && $0 ~ /(InvalidArgument|FailedPrecondition|NotFound|DataLoss|Internal)\(|error:|warning:|fprintf\(stderr/) {
      l = a[2]; gsub(/ /, "", l); t = $0; sub(/^[^:]*:[^:]*:/, "", t); print S ":" l ":" t
    }
  }' "$f"
done | sort -t: -k1,1 -k2,2n -u >"$out"
cut -d: -f1 "$out" | sort | uniq -c | sort -rn
echo "coverage: $(wc -l <"$out") error-reporting lines never ran; the list: $out"
