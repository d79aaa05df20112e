#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on the GPU machine (docs/PERFORMANCE.md, "GPU check").
#
# That machine has CUDA 13, cuBLAS, NCCL, CMake and PyTorch, but none of this machine's Debian
# packages and no network. So, here:
#   1. Open MPI (and PMIx, hwloc, libevent) as Debian packages: apt-get download + dpkg -x into a
#      prefix that gpu-check.sh points OPAL_PREFIX at;
#   2. a Release build for sm_90 only (H100/H200), without -march=native (the GPU host's CPU is
#      not this one), of fjord, the GPU tests and cuda_ops_bench, in build-gpu/ (ignored);
#   3. every shared library those binaries and Open MPI's plugins need (ldd) that the GPU
#      machine does not have: everything but glibc, the driver, cuBLAS(Lt) and NCCL (found there,
#      hundreds of MiB each); the CUDA runtime is carried (small, and the one we built against);
#   4. one xz tarball, .gpu-carry/fjord-gpu.tar.xz, checked against the 64 MiB a call may carry.
#
# usage: scripts/gpu-pack.sh [--jobs N]      then, with the device tool:
#   run(command="bash scripts/gpu-check.sh", carry=[".gpu-carry"], timeout_s=540)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    *) echo "usage: $0 [--jobs N]" >&2; exit 2 ;;
  esac
done
carry=$repo/.gpu-carry          # ignored (.gitignore); the device tool carries it
build=$repo/build-gpu           # ignored (/build*/)
work=$build/pack                # downloads, logs, the staging tree: not carried
stage=$work/stage               # what goes into the tarball, laid out as in the repo root
limit_mib=56                    # of the 64 MiB a call carries: room for the working tree
say() { echo "gpu-pack: $*"; }
die() { echo "gpu-pack: error: $*" >&2; exit 1; }

rm -rf "$stage" "$carry"
mkdir -p "$carry" "$work/debs" "$stage/.gpu-carry/lib"

# 1. Open MPI from Debian packages, unpacked into .gpu-carry/ompi (OPAL_PREFIX = .../ompi/usr).
ompi=$carry/ompi  # at its final path, so that cmake records the mpiexec the tests will run
packages="openmpi-bin libopenmpi3 openmpi-common libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7"
(cd "$work/debs" && apt-get download $packages >/dev/null 2>&1) ||
  die "apt-get download $packages failed: run apt-get update, or check the Debian mirror"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$ompi"; done
# What fjord does not need: compilers' wrappers data, Java, Fortran, OpenSHMEM, man pages.
rm -rf "$ompi/usr/share/man" "$ompi/usr/share/doc" "$ompi"/usr/lib/x86_64-linux-gnu/libmpi_java* \
  "$ompi"/usr/lib/x86_64-linux-gnu/libmpi_mpifh* "$ompi"/usr/lib/x86_64-linux-gnu/libmpi_usempi* \
  "$ompi"/usr/lib/x86_64-linux-gnu/liboshmem* "$ompi"/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_spml_* \
  "$ompi"/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_sshmem_* "$ompi"/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_scoll_* \
  "$ompi"/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_atomic_*
[ -x "$ompi/usr/bin/orterun" ] || die "openmpi-bin did not unpack usr/bin/orterun"

# 2. The sm_90 build. Tests compile in the build's absolute paths (FJORD_BINARY, mpiexec):
#    gpu-check.sh links this repo path to wherever the copy lands there.
say "building for sm_90 in $build (fjord, GPU tests, cuda_ops_bench)"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFJORD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DFJORD_NATIVE=OFF -DMPIEXEC_EXECUTABLE="$repo/.gpu-carry/ompi/usr/bin/orterun" >"$work/cmake.log" 2>&1 ||
  die "cmake failed, see $work/cmake.log"
tests=$(cd "$repo/tests/cuda" && ls *_test.cc | sed 's/\.cc$//')
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target fjord cuda_ops_bench $tests >"$work/build.log" 2>&1 ||
  die "the build failed, see $work/build.log"
mkdir -p "$stage/build-gpu/bin"
for t in fjord cuda_ops_bench $tests; do
  cp "$build/bin/$t" "$stage/build-gpu/bin/"
  strip --strip-unneeded "$stage/build-gpu/bin/$t"
done

# 3. Shared libraries the GPU machine lacks. Left out: glibc's own, the driver (libcuda), cuBLAS,
#    cuBLASLt and NCCL (gpu-check.sh finds them there), and what Open MPI's packages bring.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libutil|libresolv|libcuda\.so|libcublas|libcublasLt|libnccl|libnvidia)'
ompi_lib=$ompi/usr/lib/x86_64-linux-gnu
elfs=$(find "$stage/build-gpu/bin" "$ompi/usr/bin" "$ompi_lib" -type f \( -perm -u+x -o -name '*.so*' \) \
         -exec sh -c 'head -c 4 "$1" | grep -q ELF && echo "$1"' _ {} \;)
missing=""
for elf in $elfs; do
  LD_LIBRARY_PATH=$ompi_lib:$ompi_lib/openmpi/lib ldd "$elf" 2>/dev/null | while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    echo "$name $path"
  done
done | sort -u >"$work/needed.txt"
while read -r name path; do
  [[ $name =~ $skip ]] && continue
  if [ "$path" = "not" ]; then missing="$missing $name"; continue; fi
  case "$path" in "$stage"/* | "$carry"/*) continue ;; esac
  [ -e "$stage/.gpu-carry/lib/$name" ] || cp -L "$path" "$stage/.gpu-carry/lib/$name"
done <"$work/needed.txt"
# Open MPI's optional plugins may need libraries this machine lacks too (InfiniBand, PSM, ...);
# those plugins are switched off by gpu-check.sh's MCA settings, so only name them.
[ -z "$missing" ] || say "not found here (plugins that gpu-check.sh does not load):$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
strip --strip-unneeded "$stage"/.gpu-carry/lib/*.so* 2>/dev/null || true
cat >"$stage/.gpu-carry/pack.env" <<EOF
# written by scripts/gpu-pack.sh on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)
FJORD_PACK_REPO=$repo
FJORD_PACK_COMMIT=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo -dirty)
FJORD_PACK_TESTS="$(echo $tests)"
EOF

# 4. One tarball.
tar -cJf "$carry/fjord-gpu.tar.xz" -C "$stage" build-gpu .gpu-carry -C "$repo" .gpu-carry/ompi
rm -rf "$stage" "$ompi"
bytes=$(stat -c %s "$carry/fjord-gpu.tar.xz")
say "$carry/fjord-gpu.tar.xz: $((bytes / 1024 / 1024)) MiB ($bytes bytes); libraries: $(wc -l <"$work/needed.txt") needed, $(tar -tJf "$carry/fjord-gpu.tar.xz" | grep -c '^.gpu-carry/lib/.') carried"
[ "$bytes" -lt $((limit_mib * 1024 * 1024)) ] || die "the pack is over $limit_mib MiB; carry less"
say "ok: carry .gpu-carry (the tarball only) and run scripts/gpu-check.sh there"
