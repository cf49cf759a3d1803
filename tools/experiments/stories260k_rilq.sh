#!/usr/bin/env bash
# The RILQ evidence on stories260K (issue: "The two stages"), scaled down for a
# 2-core CPU: RTN 2-bit g64 student; calibration on C4 documents 0:1000, 128
# windows x 256 tokens (the last 32 held out), at most 100 updates of 8 windows,
# lr 1e-3 (the paper: 320 x 512, up to 1250 updates at 1e-4), validation every
# 10 updates, patience 5. Perplexity: WikiText-2 test (first 100 windows of 512)
# and C4 documents 1000:2000 (100 windows of 512), which calibration never saw.
# Prints a markdown table; outputs go to runs/stories260k-rilq/.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
rilq="${RILQ_BIN:-$here/build/rilq}"
: "${RILQ_DATA:?set RILQ_DATA}"
fp="$RILQ_DATA/models/stories260K/stories260K.bin"
out="${OUT:-$here/runs/stories260k-rilq}"
mkdir -p "$out"
q2="$out/q2-rtn-g64"
[ -d "$q2" ] || "$rilq" quantize "$fp" --method rtn --group-size 64 --out "$q2" > /dev/null
T="--threads ${THREADS:-1}"
cal_common="--windows 128 --seq-len 256 --val-windows 32 --c4-docs 0:1000 --accum 8 --eval-every 10 --patience 5 --max-micro-steps 800 --lr 1e-3 --cache $out/cache $T"

ppl() { # model [adapter] -> "wikitext2 c4"
  local a=()
  [ -n "${2:-}" ] && a=(--adapter "$2")
  local w c
  w=$("$rilq" ppl "$1" "${a[@]}" --dataset wikitext2 --ctx 512 --max-windows 100 $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
  c=$("$rilq" ppl "$1" "${a[@]}" --dataset c4 --ctx 512 --c4-windows 100 --c4-docs 1000:2000 $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
  echo "$w $c"
}

calibrate() { # name extra-args...
  local name=$1; shift
  [ -f "$out/$name/adapter/adapter_config.json" ] || \
    "$rilq" calibrate "$fp" --student "$q2" --out "$out/$name" $cal_common "$@" > "$out/$name.log" 2>&1
}

row() { # label model adapter
  read -r w c < <(ppl "$2" "${3:-}")
  printf '| %s | %s | %s |\n' "$1" "$w" "$c" | tee -a "$out/table.md"
}

: > "$out/table.md"
echo "| stories260K, RTN 2-bit g64 | WikiText-2 | C4 held out |" | tee -a "$out/table.md"
echo "| --- | --- | --- |" | tee -a "$out/table.md"
row "full precision" "$fp"
row "2-bit" "$q2"
for r in 16 32 64; do
  calibrate "svd-r$r" --adapter lora --init svd --rank $r --alpha $r --lr 0 --max-micro-steps 8
  row "2-bit + SVD init (LoftQ), r=$r" "$q2" "$out/svd-r$r/adapter"
  calibrate "rilq-lora-r$r" --adapter lora --rank $r
  row "2-bit + RILQ (LoRA), r=$r" "$q2" "$out/rilq-lora-r$r/adapter"
  calibrate "rilq-qalora-r$r" --adapter qalora --rank $r
  row "2-bit + RILQ (QA-LoRA), r=$r" "$q2" "$out/rilq-qalora-r$r/adapter"
done
for scope in linear layer model; do
  for gt in 0.5 0; do
    name="scope-$scope-gt$gt"
    calibrate "$name" --adapter qalora --rank 64 --scope $scope --gt-weight $gt
    row "RILQ QA-LoRA r=64, scope $scope, GT weight $gt" "$q2" "$out/$name/adapter"
  done
done
