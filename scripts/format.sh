#!/usr/bin/env bash
# The house format (.clang-format, Google style at 110 columns) over every C++ and CUDA file git
# tracks. `bash scripts/format.sh` rewrites them; `bash scripts/format.sh --check` (CTest
# format.check, so every test run) changes nothing and fails, naming each file that differs and the
# one line that fixes it.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[ "${1:-}" = "--check" ] && check=1
if ! command -v clang-format >/dev/null; then
  echo "format: clang-format is missing: run bash scripts/install-deps.sh (Debian package clang-format)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files -- '*.h' '*.cc' '*.cu' '*.cuh' 2>/dev/null || find . -path ./build\* -prune -o \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) -print)
if [ $check -eq 0 ]; then
  clang-format -i --style=file "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'format: %s is not formatted as .clang-format says\n' "${bad[@]}" >&2
  echo "format: ${#bad[@]} file(s) differ; fix with: bash scripts/format.sh" >&2
  exit 1
fi
echo "format: ok, ${#files[@]} files"
