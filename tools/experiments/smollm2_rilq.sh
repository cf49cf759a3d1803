#!/usr/bin/env bash
# The RILQ evidence on SmolLM2-135M-Instruct (issue: "The two stages", evidence 1
# and 2), scaled down for a 2-core CPU shared with other work: RTN 2-bit g64
# student; calibration on C4 documents 0:1000, 48 windows x 128 tokens (the last
# 16 held out), at most 40 updates of 8 windows (1024 tokens each), lr 1e-3,
# validation every 10 updates, patience 3 (the paper: 320 x 512, up to 1250
# updates at 1e-4). Perplexity: WikiText-2 test (first 16 windows of 512) and
# C4 documents 1000:2000 (16 windows of 512), which calibration never saw.
# Prints a markdown table; outputs go to runs/smollm2-rilq/.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
rilq="${RILQ_BIN:-$here/build/rilq}"
: "${RILQ_DATA:?set RILQ_DATA}"
fp="${RILQ_SMOLLM2:-$("$here/tools/fetch_models.sh" | tail -n 1)}"
out="${OUT:-$here/runs/smollm2-rilq}"
mkdir -p "$out"
q2="$out/q2-rtn-g64"
T="--threads ${THREADS:-1}"
[ -d "$q2" ] || "$rilq" quantize "$fp" --method rtn --group-size 64 --out "$q2" $T > /dev/null
steps=${STEPS:-320}
pw=${PPL_WINDOWS:-16}
cal_common="--windows 48 --seq-len 128 --val-windows 16 --c4-docs 0:1000 --accum 8 --eval-every 10 --patience 3 --max-micro-steps $steps --lr 1e-3 --head-error-windows 4 --cache $out/cache $T"

ppl() { # model [adapter] -> "wikitext2 c4", remembered in $out/ppl/ so a rerun only adds rows
  local key
  key="$(printf '%s %s %s' "$1" "${2:-}" "$pw" | cksum | cut -d' ' -f1)"
  mkdir -p "$out/ppl"
  if [ ! -s "$out/ppl/$key" ]; then ppl_run "$@" > "$out/ppl/$key.tmp" && mv "$out/ppl/$key.tmp" "$out/ppl/$key"; fi
  cat "$out/ppl/$key"
}

ppl_run() {
  local a=()
  [ -n "${2:-}" ] && a=(--adapter "$2")
  local w c
  w=$("$rilq" ppl "$1" "${a[@]}" --dataset wikitext2 --ctx 512 --max-windows $pw $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
  c=$("$rilq" ppl "$1" "${a[@]}" --dataset c4 --ctx 512 --c4-windows $pw --c4-docs 1000:2000 $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
  echo "$w $c"
}

calibrate() { # name extra-args...
  local name=$1; shift
  [ -f "$out/$name/adapter/adapter_config.json" ] || \
    "$rilq" calibrate "$fp" --student "$q2" --out "$out/$name" $cal_common "$@" > "$out/$name.log" 2>&1
}

head_err() { # name -> "before after updates seconds"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); g=lambda *k: next((d[x] for x in k if x in d), "?"); f=lambda x: f"{x:.4f}" if isinstance(x, float) else x; print(f(g("head_error_before")), f(g("head_error_after")), g("updates","steps"), round(g("total_seconds")))' "$out/$1/calibrate.json" 2>/dev/null || echo "? ? ? ?"
}

row() { # label model adapter [calib-name]
  read -r w c < <(ppl "$2" "${3:-}")
  local h="- - - -"
  [ -n "${4:-}" ] && h=$(head_err "$4")
  read -r hb ha up secs <<< "$h"
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$w" "$c" "$hb" "$ha" "$up" "$secs" | tee -a "$out/table.md"
}

# CALIB_ONLY="name:adapter:rank ..." runs just those calibrations (to spread them over cores), then exits
if [ -n "${CALIB_ONLY:-}" ]; then
  for spec in $CALIB_ONLY; do
    IFS=: read -r name ad r <<< "$spec"
    calibrate "$name" --adapter "$ad" --rank "$r"
  done
  exit 0
fi

: > "$out/table.md"
echo "| SmolLM2-135M, RTN 2-bit g64 | WikiText-2 | C4 held out | head err before | head err after | updates | seconds |" | tee -a "$out/table.md"
echo "| --- | --- | --- | --- | --- | --- | --- |" | tee -a "$out/table.md"
row "full precision" "$fp"
row "2-bit" "$q2"
for r in 16 32 64; do
  calibrate "svd-r$r" --adapter lora --init svd --rank $r --alpha $r --lr 0 --max-micro-steps 8
  row "2-bit + SVD init (LoftQ), r=$r" "$q2" "$out/svd-r$r/adapter" "svd-r$r"
done
for r in 16 32 64; do
  calibrate "rilq-lora-r$r" --adapter lora --rank $r
  row "2-bit + RILQ (LoRA), r=$r" "$q2" "$out/rilq-lora-r$r/adapter" "rilq-lora-r$r"
done
calibrate "rilq-qalora-r64" --adapter qalora --rank 64
row "2-bit + RILQ (QA-LoRA), r=64" "$q2" "$out/rilq-qalora-r64/adapter" "rilq-qalora-r64"
