#!/usr/bin/env bash
# Installs the Debian packages fjord builds and tests with, when missing, and the Python test oracle.
# Idempotent; prints nothing when everything is already there. CUDA (nvcc, cuBLAS, NCCL) is not a
# Debian package here: it is used when present (see FJORD_CUDA in CMakeLists.txt).
# python3-numpy runs the independent Python readers and the HF GPT-2 oracle of tests/runtime/formats/
# (those tests skip without it). libcli11-dev (header-only CLI11) parses the fjord command line.
# zlib1g-dev and libzstd-dev: fjord prep reads gzip and zstd inputs.
# libpcre2-dev runs tokenizer.json's Split regexes, libicu-dev its NFC/NFKC normalizers.
#
# The Python test oracle (docs/ARCHITECTURE.md, "Tokenizers"): a venv at <repo>/.venv from
# scripts/requirements-test.txt, stamped with that file's sha256 so it is rebuilt only when the file
# changes. Decision (2026-12-07): PyPI's Linux torch wheel pulls the CUDA libraries (GBs) and
# PyTorch's own index is not reachable, so the venv uses Debian's python3-torch 1.13 through
# --system-site-packages, with transformers 4.45.2 (the release checked with torch 1.13 that has
# Llama 3.1's "llama3" rope scaling, Mistral and Qwen2). Measured on the 2-core dev machine:
# python3-torch and its 167 dependencies ~4 min and 607 MB (apt), the venv ~35 s and 160 MB.
# Without network the venv is skipped with one warning and the tests that need it skip.
set -euo pipefail
packages=(cmake g++ make pkg-config libprotobuf-dev protobuf-compiler libopenblas-dev libgtest-dev
          openmpi-bin libopenmpi-dev libssl-dev python3 python3-numpy ccache slurm-wlm munge libcli11-dev clang-format
          libpcre2-dev libicu-dev python3-venv python3-torch zlib1g-dev libzstd-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fjord: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
requirements="$root/scripts/requirements-test.txt"
venv="$root/.venv"
stamp="$venv/.fjord-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0
echo "fjord: installing the Python test oracle into $venv (scripts/requirements-test.txt)" >&2
if /usr/bin/python3 -m venv --clear --system-site-packages "$venv" >/dev/null &&
   "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$requirements" >"$venv/install.log" 2>&1; then
  echo "$want" >"$stamp"
else
  echo "fjord: warning: could not install the Python test oracle (no network?; see $venv/install.log); the tests that need it will skip, rerun bash scripts/install-deps.sh to get it" >&2
fi
exit 0
