#!/usr/bin/env bash
# Installs the Debian packages fjord builds and tests with, when missing. Idempotent; prints
# nothing when everything is already there. CUDA (nvcc, cuBLAS, NCCL) is not a Debian package
# here: it is used when present (see FJORD_CUDA in CMakeLists.txt).
# python3-numpy runs the independent Python readers and the HF GPT-2 oracle of tests/runtime/formats/
# (those tests skip without it). libcli11-dev (header-only CLI11) parses the fjord command line.
# zlib1g-dev and libzstd-dev: fjord prep reads gzip and zstd inputs.
set -euo pipefail
packages=(cmake g++ make pkg-config libprotobuf-dev protobuf-compiler libopenblas-dev libgtest-dev
          openmpi-bin libopenmpi-dev libssl-dev python3 python3-numpy ccache slurm-wlm munge libcli11-dev clang-format
          zlib1g-dev libzstd-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "fjord: installing ${missing[*]}" >&2
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
