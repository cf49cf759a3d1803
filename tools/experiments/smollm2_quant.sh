#!/usr/bin/env bash
# Strong 2-bit quantizers on SmolLM2-135M-Instruct (issue: "Make the 2-bit model
# good"): RTN, RTN + clip search, GPTQ, block-wise reconstruction (scales and
# offsets: "clip"; and the weights: "weights", EfficientQAT's Block-AP) after RTN
# or GPTQ, at group size 64 (and 32: G32=1 for every method, or G32="rtn rtn-bap"
# for the methods named: rtn rtn-clip gptq rtn-lwc rtn-bap gptq-bap); then RILQ (QA-LoRA) on the two
# best and the merged 2-bit models; RILQ's rank sensitivity (RANKS, default 16 32,
# beside 64) on the best base; ARC-Easy and PIQA for full precision, the best
# 2-bit baseline and the best merged model (TASKS=1).
#
# Budgets for a 2-core CPU (each settable):
#   GPTQ          GPTQ_WINDOWS x GPTQ_LEN C4 windows (64 x 512: the independent check's)
#   block-wise    REFINE_WINDOWS x REFINE_LEN C4 windows (32 x 256), REFINE_EPOCHS (2)
#   RILQ          QA-LoRA r=64 alpha 16, 48 C4 windows of 128 (16 held out),
#                 RILQ_STEPS micro-steps (320: 40 updates of 8), lr 1e-3; on the best
#                 base also with trainable group scales (--train-scales)
#   perplexity    WikiText-2 test, first PPL_WINDOWS windows of 512 (40), and C4
#                 documents 1000:2000 (PPL_WINDOWS windows of 512); every
#                 calibration draws from C4 documents 0:1000
#   tasks         first TASK_LIMIT documents (500) of ARC-Easy and PIQA (validation)
# Every step is remembered under $OUT (default runs/smollm2-quant), so a re-run
# only adds what is missing. Prints markdown tables (also $OUT/table.md).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
rilq="${RILQ_BIN:-$here/build/rilq}"
: "${RILQ_DATA:?set RILQ_DATA}"
fp="${RILQ_SMOLLM2:-$("$here/tools/fetch_models.sh" | tail -n 1)}"
out="${OUT:-$here/runs/smollm2-quant}"
mkdir -p "$out/ppl" "$out/tasks"
T="--threads ${THREADS:-2}"
pw=${PPL_WINDOWS:-40}
gw=${GPTQ_WINDOWS:-64} gl=${GPTQ_LEN:-512}
rw=${REFINE_WINDOWS:-32} rl=${REFINE_LEN:-256} re=${REFINE_EPOCHS:-2}
steps=${RILQ_STEPS:-320}
limit=${TASK_LIMIT:-500}

# quantize NAME ARGS...: the artifact $out/NAME, with its seconds and peak memory in $out/NAME.cost
quantize() {
  local name=$1; shift
  [ -f "$out/$name/config.json" ] && return 0
  /usr/bin/time -f "%e %M" -o "$out/$name.time" "$rilq" quantize "$fp" --out "$out/$name" $T "$@" > "$out/$name.log" 2>&1
  read -r secs kib < "$out/$name.time"
  echo "$secs $((kib / 1024))" > "$out/$name.cost"
}

ppl() { # model [adapter] -> "wikitext2 c4", remembered
  local key
  key="$(printf '%s %s %s' "$1" "${2:-}" "$pw" | cksum | cut -d' ' -f1)"
  if [ ! -s "$out/ppl/$key" ]; then
    local a=()
    [ -n "${2:-}" ] && a=(--adapter "$2")
    local w c
    w=$("$rilq" ppl "$1" "${a[@]}" --dataset wikitext2 --ctx 512 --max-windows "$pw" $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
    c=$("$rilq" ppl "$1" "${a[@]}" --dataset c4 --ctx 512 --c4-windows "$pw" --c4-docs 1000:2000 $T 2>/dev/null | sed -n 's/.*perplexity: \([0-9.e+]*\).*/\1/p')
    echo "$w $c" > "$out/ppl/$key.tmp" && mv "$out/ppl/$key.tmp" "$out/ppl/$key"
  fi
  cat "$out/ppl/$key"
}

row() { # label model [adapter] [cost-name]
  local w c secs="-" mib="-"
  read -r w c < <(ppl "$2" "${3:-}")
  [ -n "${4:-}" ] && [ -f "$out/$4.cost" ] && read -r secs mib < "$out/$4.cost"
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$w" "$c" "$secs" "$mib" | tee -a "$out/table.md"
}

wiki() { ppl "$1" "${2:-}" | cut -d' ' -f1; }

merged_row() { # label name: the merged artifact's row, or what the merge said when it refused
  if [ -f "$out/$2/config.json" ]; then row "$1" "$out/$2"
  else printf '| %s | refused: %s | | | |\n' "$1" "$(grep -o 'up to [0-9.e+-]* relative.*above the bound [0-9.e+-]*' "$out/$2.log" | head -n 1)" | tee -a "$out/table.md"; fi
}

gptq="--method gptq --calib-windows $gw --calib-seq-len $gl"
refine="--calib-windows $rw --calib-seq-len $rl --refine-epochs $re"
# want METHOD G: is this row part of the run (g64: all; g32: G32=1 all, or the listed methods)
want() { [ "$2" = 64 ] || [ "${G32:-}" = 1 ] || case " ${G32:-} " in *" $1 "*) true ;; *) false ;; esac; }
for g in 64 ${G32:+32}; do
  want rtn $g && quantize "rtn-g$g" --method rtn --group-size "$g"
  want rtn-clip $g && quantize "rtn-clip-g$g" --method rtn --group-size "$g" --clip-search
  want gptq $g && quantize "gptq-g$g" $gptq --group-size "$g"
  want rtn-lwc $g && quantize "rtn-lwc-g$g" --method rtn --group-size "$g" --refine clip $refine
  want rtn-bap $g && quantize "rtn-bap-g$g" --method rtn --group-size "$g" --refine weights $refine
  want gptq-bap $g && quantize "gptq-bap-g$g" --method gptq --calib-windows "$rw" --calib-seq-len "$rl" --group-size "$g" --refine weights --refine-epochs "$re"
done

: > "$out/table.md"
{
  echo
  echo "SmolLM2-135M-Instruct, 2 bits: WikiText-2 test ($pw windows of 512) and C4 documents 1000:2000 ($pw windows of 512);"
  echo "quantization wall seconds and peak resident MiB on ${THREADS:-2} threads"
  echo
  echo '| model | WikiText-2 | C4 held out | seconds | peak MiB |'
  echo '| --- | --- | --- | --- | --- |'
} | tee -a "$out/table.md"
row "full precision" "$fp"
for g in 64 ${G32:+32}; do
  want rtn $g && row "RTN g$g" "$out/rtn-g$g" "" "rtn-g$g"
  want rtn-clip $g && row "RTN + clip search g$g" "$out/rtn-clip-g$g" "" "rtn-clip-g$g"
  want gptq $g && row "GPTQ g$g ($gw x $gl)" "$out/gptq-g$g" "" "gptq-g$g"
  want rtn-lwc $g && row "RTN + block-wise (scales, offsets) g$g" "$out/rtn-lwc-g$g" "" "rtn-lwc-g$g"
  want rtn-bap $g && row "RTN + block-wise (and weights) g$g" "$out/rtn-bap-g$g" "" "rtn-bap-g$g"
  want gptq-bap $g && row "GPTQ + block-wise (and weights) g$g" "$out/gptq-bap-g$g" "" "gptq-bap-g$g"
done

# the two best g64 bases by WikiText-2 perplexity
best=$(for n in rtn-g64 rtn-clip-g64 gptq-g64 rtn-lwc-g64 rtn-bap-g64 gptq-bap-g64; do echo "$(wiki "$out/$n") $n"; done | sort -g | head -n 2 | cut -d' ' -f2)
{
  echo
  echo "RILQ (QA-LoRA r=64, alpha 16; 48 C4 windows of 128, 16 held out; $steps micro-steps of 8 per update, lr 1e-3) on the two best bases, then merged into the 2-bit offsets:"
  echo
  echo '| model | WikiText-2 | C4 held out | seconds | peak MiB |'
  echo '| --- | --- | --- | --- | --- |'
} | tee -a "$out/table.md"
# calibrate NAME BASE ARGS...: RILQ at the budget above on base $out/BASE into $out/NAME
# (seconds and peak memory in $out/NAME.cost)
calibrate() {
  local cal="$out/$1" base="$2"; shift 2
  [ -f "$cal/adapter/adapter_config.json" ] && return 0
  /usr/bin/time -f "%e %M" -o "$cal.time" "$rilq" calibrate "$fp" --student "$out/$base" --out "$cal" --alpha 16 \
    --windows 48 --seq-len 128 --val-windows 16 --c4-docs 0:1000 --accum 8 --eval-every 10 --patience 3 \
    --max-micro-steps "$steps" --lr 1e-3 --head-error-windows 4 --cache "$out/cache" $T "$@" > "$cal.log" 2>&1
  read -r secs kib < "$cal.time"; echo "$secs $((kib / 1024))" > "$cal.cost"
}
for b in $best; do
  cal="$out/rilq-$b"
  calibrate "rilq-$b" "$b" --rank 64
  # the merge refuses (and writes nothing) when its logit check fails: a row says so
  [ -f "$out/merged-$b/config.json" ] || "$rilq" merge "$out/$b" "$cal/adapter" --out "$out/merged-$b" $T > "$out/merged-$b.log" 2>&1 || true
  row "$b + RILQ" "$out/$b" "$cal/adapter" "rilq-$b"
  merged_row "$b + RILQ, merged (2-bit, no adapters)" "merged-$b"
done
# trainable group scales beside the adapters, on the best base
b=$(echo "$best" | head -n 1)
cal="$out/rilq-scales-$b"
calibrate "rilq-scales-$b" "$b" --rank 64 --train-scales
[ -f "$out/merged-scales-$b/config.json" ] || "$rilq" merge "$out/$b" "$cal/adapter" --out "$out/merged-scales-$b" $T > "$out/merged-scales-$b.log" 2>&1 || true
row "$b + RILQ + trainable scales" "$out/$b" "$cal/adapter" "rilq-scales-$b"
merged_row "$b + RILQ + trainable scales, merged" "merged-scales-$b"
# rank sensitivity on the best base: the same budget at ranks RANKS (and 64 above), alpha 16
{
  echo
  echo "RILQ rank sensitivity on $b (same budget, alpha 16):"
  echo
  echo '| model | WikiText-2 | C4 held out | seconds | peak MiB |'
  echo '| --- | --- | --- | --- | --- |'
} | tee -a "$out/table.md"
for r in ${RANKS:-16 32}; do
  calibrate "rilq-r$r-$b" "$b" --rank "$r"
  row "$b + RILQ r=$r" "$out/$b" "$out/rilq-r$r-$b/adapter" "rilq-r$r-$b"
done
row "$b + RILQ r=64" "$out/$b" "$out/rilq-$b/adapter" "rilq-$b"
best_merged=""
for n in merged-$(echo "$best" | head -n 1) merged-$(echo "$best" | tail -n 1) merged-scales-$b; do
  [ -f "$out/$n/config.json" ] && best_merged="$best_merged $n"
done

if [ -n "${TASKS:-}" ]; then
  base=$(echo "$best" | head -n 1)
  mbest=$(for n in $best_merged; do echo "$(wiki "$out/$n") $n"; done | sort -g | head -n 1 | cut -d' ' -f2)
  {
    echo
    echo "Tasks (lm-eval protocol, 0-shot, first $limit documents; PIQA: validation):"
    echo
    echo '| model | ARC-Easy acc | ARC-Easy acc_norm | PIQA acc | PIQA acc_norm |'
    echo '| --- | --- | --- | --- | --- |'
  } | tee -a "$out/table.md"
  for pair in "full precision:$fp" "best 2-bit baseline ($base):$out/$base" "best merged ($mbest):$out/$mbest"; do
    label=${pair%%:*} model=${pair#*:}
    key="$(printf '%s %s' "$model" "$limit" | cksum | cut -d' ' -f1)"
    [ -s "$out/tasks/$key.json" ] || "$rilq" eval "$model" --tasks arc_easy,piqa --limit "$limit" --quiet --out "$out/tasks/$key.json" $T > /dev/null
    python3 - "$label" "$out/tasks/$key.json" <<'EOF' | tee -a "$out/table.md"
import json, sys
r = json.load(open(sys.argv[2]))["results"]
f = lambda t, m: f'{r[t][m + ",none"]:.4f}'
print(f"| {sys.argv[1]} | {f('arc_easy', 'acc')} | {f('arc_easy', 'acc_norm')} | {f('piqa', 'acc')} | {f('piqa', 'acc_norm')} |")
EOF
  done
fi
