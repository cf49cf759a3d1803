#!/usr/bin/env bash
# ARC-Easy task fine-tuning on SmolLM2-135M at 2 bits (issue: "The two stages",
# evidence 4), scaled down for a 2-core CPU: RTN 2-bit g64; RILQ calibration
# with QA-LoRA r=16 on 64 C4 windows of 256 tokens (16 held out), 30 updates of
# 8 windows at lr 1e-3; fine-tuning on the first 512 ARC-Easy training
# questions, 1 epoch, batch 16, lr 3e-4, from the RILQ adapters or from fresh
# adapters (the plain QA-LoRA baseline); ARC-Easy test accuracy on the first
# $LIMIT questions (default 300) next to full precision. Outputs: runs/smollm2-arc/.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
rilq="${RILQ_BIN:-$here/build/rilq}"
: "${RILQ_DATA:?set RILQ_DATA}"
fp="${RILQ_SMOLLM2:-$("$here/tools/fetch_models.sh" | tail -n 1)}"
out="${OUT:-$here/runs/smollm2-arc}"
limit=${LIMIT:-300}
mkdir -p "$out"
[ -d "$out/q2" ] || "$rilq" quantize "$fp" --method rtn --group-size 64 --out "$out/q2" > /dev/null
[ -f "$out/rilq/adapter/adapter_config.json" ] || "$rilq" calibrate "$fp" --student "$out/q2" --out "$out/rilq" \
  --windows 64 --seq-len 256 --val-windows 16 --rank 16 --alpha 16 --max-micro-steps 240 --eval-every 10 --lr 1e-3 \
  --cache "$out/cache" > "$out/rilq.log" 2>&1
ft() { # name extra
  local name=$1; shift
  [ -f "$out/$name/adapter/adapter_config.json" ] || "$rilq" finetune "$out/q2" --task arc_easy --out "$out/$name" \
    --epochs 1 --limit 512 --lr 3e-4 --batch 16 --rank 16 --alpha 16 "$@" > "$out/$name.log" 2>&1
}
ft ft-rilq --adapter "$out/rilq/adapter"
ft ft-plain
ev() { "$rilq" eval "$@" --tasks arc_easy --limit "$limit" --quiet 2>/dev/null \
         | awk -F'|' '$6 ~ /^acc *$/ {acc=$8} $6 ~ /^acc_norm/ {an=$8} END {printf "| %s | %s |", acc, an}'; }
echo "| SmolLM2-135M, ARC-Easy test (first $limit) | acc | acc_norm |" | tee "$out/table.md"
echo "| --- | --- | --- |" | tee -a "$out/table.md"
echo "| full precision $(ev "$fp")" | tee -a "$out/table.md"
echo "| 2-bit RTN g64 $(ev "$out/q2")" | tee -a "$out/table.md"
echo "| 2-bit + RILQ (no fine-tuning) $(ev "$out/q2" --adapter "$out/rilq/adapter")" | tee -a "$out/table.md"
echo "| 2-bit + QA-LoRA fine-tuning (fresh adapters) $(ev "$out/q2" --adapter "$out/ft-plain/adapter")" | tee -a "$out/table.md"
echo "| 2-bit + RILQ-initialized fine-tuning $(ev "$out/q2" --adapter "$out/ft-rilq/adapter")" | tee -a "$out/table.md"
