#!/usr/bin/env bash
# Benchmark: RILQ calibration speed (`rilq calibrate`) on SmolLM2-135M at the
# default settings (QA-LoRA r=64 alpha 16 on all seven projections, windows of
# 512 tokens, micro-batch 1 x 8 accumulation steps per update, Model-Loss +
# GT-Loss, C4), on a few windows, then the time of one full default run
# (320 windows, 64 held out, validation every 25 updates, at most 10000
# micro-steps = 1250 updates) extrapolated from the measured phases.
# Figure: the update's rate in model FLOPs (src/train/plan.c's count for these
# settings: forward, input-gradient backward, causal attention, adapters).
# Reference: the sgemm rate of the same BLAS at the same thread count, measured
# right after the run (build/bench_update --ref-only), and the ratio (target >= 50%).
# Also the teacher's forward tokens/s in the same run. Runs at 1 and 2 threads
# (BENCH_THREADS="1 2"; extra arguments go to `rilq calibrate`). The measured
# update time includes what a short run amortizes badly: the first touch of the
# training state and one checkpoint write (~160 MB) per BENCH_UPDATES updates;
# build/bench_update times steady-state steps of the same update.
# Prints figures; asserts nothing.  Usage: tools/bench/bench_calib.sh [calibrate options]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
rilq="${RILQ_BIN:-$here/build/rilq}"
ref_bin="${RILQ_BENCH_UPDATE:-$(dirname "$rilq")/bench_update}"
: "${RILQ_DATA:?set RILQ_DATA}"
fp="${RILQ_SMOLLM2:-$("$here/tools/fetch_models.sh" | tail -n 1)}"
W=${BENCH_WINDOWS:-24} V=${BENCH_VAL:-8} U=${BENCH_UPDATES:-2}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "bench_calib: load before: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) on $(nproc) cores"
for th in ${BENCH_THREADS:-1 2}; do
  "$rilq" calibrate "$fp" --quantize rtn --out "$tmp/run$th" --windows "$W" --val-windows "$V" \
    --max-micro-steps $((8 * U)) --eval-every "$U" --patience 0 --head-error-windows 0 --cache "$tmp/cache$th" \
    --threads "$th" "$@" > "$tmp/log$th" 2>&1 || { cat "$tmp/log$th"; exit 1; }
  "$ref_bin" --ref-only --threads "$th" > "$tmp/ref$th"
  python3 - "$tmp/run$th/calibrate.json" "$W" "$V" "$U" "$th" "$tmp/ref$th" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); W, V, U, th = map(int, sys.argv[2:6])
ref = dict(l.strip().split("=", 1) for l in open(sys.argv[6]) if "=" in l)
sgemm, flops_tok = float(ref["sgemm_gflops"]), float(ref["calib_flops_per_token"])
T, accum = d["seq_len"], d["accum"]
teacher_tok_s = W * T / d["teacher_seconds"]
passes = 2                               # before training and after the last update (eval-every = U)
val_win_s = d["validation_seconds"] / (passes * V)
update_s = (d["train_seconds"] - d["validation_seconds"]) / d["updates"]
train_tok_s = accum * T / update_s
gflops = train_tok_s * flops_tok / 1e9
full_updates, every, nval, nwin = 10000 // accum, 25, 64, 320
t_teacher = nwin * T / teacher_tok_s
t_updates = full_updates * update_s
t_val = (1 + full_updates // every) * nval * val_win_s
print(f"bench_calib: SmolLM2-135M, {d['adapter']} r={d['rank']} alpha={d['alpha']}, T={T}, {accum} micro-steps per update, "
      f"{th} thread(s), measured on {W} windows ({V} held out), {d['updates']} updates")
print(f"  update (8 x {T} tokens, forward + backward + Adam): {update_s:.1f} s = {1/update_s:.4f} updates/s, "
      f"{train_tok_s:.0f} tokens/s, {flops_tok/1e9:.2f} GFLOP/token = {gflops:.1f} GFLOP/s")
print(f"  sgemm reference (same BLAS, {th} thread(s), measured after the run): {sgemm:.1f} GFLOP/s; "
      f"ratio {100*gflops/sgemm:.1f}% (target >= 50%)")
print(f"  teacher forward: {teacher_tok_s:.0f} tokens/s; update/teacher tokens ratio {train_tok_s/teacher_tok_s:.2f} (ideal ~0.5)")
print(f"  validation: {val_win_s:.2f} s per window of {T}")
print(f"  one full default run (320 windows, 64 held out, <= 1250 updates, validation every 25):")
print(f"    teacher {t_teacher/60:.1f} min + updates {t_updates/3600:.1f} h + validation {t_val/3600:.1f} h "
      f"= {(t_teacher+t_updates+t_val)/3600:.1f} h at the 1250-update cap; "
      f"{(t_teacher + 100*update_s + 5*nval*val_win_s)/60:.0f} min per 100 updates")
PY
done
echo "bench_calib: load after: $(cut -d' ' -f1-3 /proc/loadavg)"
