#!/usr/bin/env bash
# Makes the Debian package of fjord with cpack (CMakeLists.txt, "Install"): fjord_VERSION_ARCH.deb, or
# fjord-cuda_VERSION_ARCH.deb from a CUDA build, with Depends computed by dpkg-shlibdeps and the version
# from `git describe`. Prints the package's path on the last line.
#
#   package.sh BUILD_DIR OUT_DIR   package the (configured) build in BUILD_DIR: builds target fjord first
#   package.sh --cpu OUT_DIR       configure a CPU-only build for other machines (-DFJORD_CUDA=OFF
#                                  -DFJORD_NATIVE=OFF, no tests) in OUT_DIR/build, build it, package it
#
# Exit 77 when cpack, dpkg-deb or dpkg-shlibdeps is missing (apt-get install cmake dpkg-dev).
set -euo pipefail
die() { echo "package: $*" >&2; exit 1; }
[[ $# -eq 2 ]] || die "usage: $0 BUILD_DIR OUT_DIR | $0 --cpu OUT_DIR"
for tool in cmake cpack dpkg-deb dpkg-shlibdeps; do
  command -v "$tool" >/dev/null || { echo "package: $tool is not installed (apt-get install cmake dpkg-dev)" >&2; exit 77; }
done
src=$(cd "$(dirname "$0")/.." && pwd)
out=$2
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ $1 == --cpu ]]; then
  build=$out/build
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFJORD_CUDA=OFF -DFJORD_NATIVE=OFF -DFJORD_TESTS=OFF >/dev/null
else
  build=$(cd "$1" && pwd)
  [[ -f $build/CPackConfig.cmake ]] || die "$build is not a configured fjord build (no CPackConfig.cmake): run scripts/build.sh first"
  if grep -q '^FJORD_NATIVE:BOOL=ON' "$build/CMakeCache.txt"; then
    echo "package: note: $build is built with -march=native (FJORD_NATIVE=ON): its package runs only on CPUs like this one; use --cpu, or -DFJORD_NATIVE=OFF, for a package for other nodes" >&2
  fi
fi
cmake --build "$build" --target fjord -j "$(nproc)" >"$out/build.log" 2>&1 || { tail -20 "$out/build.log" >&2; die "building fjord failed; log in $out/build.log"; }
# cpack re-runs the install step into its own staging tree; -B keeps everything it writes in OUT.
(cd "$build" && cpack -G DEB -B "$out" >"$out/cpack.log" 2>&1) || { tail -20 "$out/cpack.log" >&2; die "cpack failed; log in $out/cpack.log"; }
deb=$(ls -t "$out"/*.deb | head -1)
dpkg-deb -I "$deb"
dpkg-deb -c "$deb"
echo "$deb"
