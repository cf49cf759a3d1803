#!/usr/bin/env bash
# Benchmark: the teacher pass of `rilq calibrate` (the FP teacher's final hidden
# states of every calibration window, written to the teacher cache) on
# SmolLM2-135M (the Q4_1 GGUF: its tensors dequantized to fp32), layer-streamed
# against the whole-model pass, in the same run.
# Figure: peak RSS (/usr/bin/time -f %M) and seconds of the layer-streamed pass
# (build/bench_teacher --mode memory: the windows' residual streams in memory;
# --mode file: in an unlinked scratch file beside the cache). Reference: the
# whole-model pass (--mode whole: the model loaded in fp32, rq_teacher_cache_write),
# measured in the same run on the same windows; ratios streamed / whole. The
# three caches must be byte-identical (cmp; a difference is reported, not hidden).
# Windows: BENCH_WINDOWS (default 64; the calibrate default is 320) of
# BENCH_SEQ_LEN (512) tokens, C4 documents 0:1000, seed 42; BENCH_THREADS (1 2).
# Prints figures; asserts nothing.  Usage: tools/bench/bench_teacher.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${RILQ_BENCH_TEACHER:-$here/build/bench_teacher}"
: "${RILQ_DATA:?set RILQ_DATA}"
model="${RILQ_SMOLLM2:-$("$here/tools/fetch_models.sh" | tail -n 1)}"
W=${BENCH_WINDOWS:-64} T=${BENCH_SEQ_LEN:-512}
V=$((W / 5 > 0 ? W / 5 : 1))
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "bench_teacher: $model, $W windows x $T tokens; load before: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) on $(nproc) cores"
for th in ${BENCH_THREADS:-1 2}; do
  for mode in whole memory file; do
    /usr/bin/time -f "peak_rss_kb=%M" -o "$tmp/time.$mode" \
      "$bin" "$model" "$tmp/cache.$mode.rqt" --mode "$mode" --windows "$W" --val "$V" --seq-len "$T" \
      --threads "$th" > "$tmp/out.$mode" 2> "$tmp/err.$mode" || { cat "$tmp/err.$mode"; exit 1; }
    cat "$tmp/time.$mode" >> "$tmp/out.$mode"
  done
  same=yes
  for mode in memory file; do cmp -s "$tmp/cache.whole.rqt" "$tmp/cache.$mode.rqt" || same="NO ($mode differs)"; done
  python3 - "$tmp" "$th" "$same" <<'PY'
import sys
tmp, th, same = sys.argv[1], sys.argv[2], sys.argv[3]
r = {m: dict(l.strip().split("=", 1) for l in open(f"{tmp}/out.{m}") if "=" in l) for m in ("whole", "memory", "file")}
mib = lambda kb: float(kb) / 1024.0
w = r["whole"]
print(f"bench_teacher: {w['windows']} windows x {w['seq_len']} tokens, {th} thread(s); fp32 model "
      f"{int(w['fp32_model_bytes'])/2**20:.0f} MiB; caches identical: {same}")
print(f"  reference, whole fp32 model:  peak RSS {mib(w['peak_rss_kb']):7.1f} MiB, {float(w['seconds']):7.1f} s "
      f"({float(w['tokens_per_s']):.0f} tokens/s)")
for m, what in (("memory", "streams in memory"), ("file", "streams in a file")):
    x = r[m]
    print(f"  layer-streamed, {what}: peak RSS {mib(x['peak_rss_kb']):7.1f} MiB "
          f"(ratio {float(x['peak_rss_kb'])/float(w['peak_rss_kb']):.2f}), {float(x['seconds']):7.1f} s "
          f"(ratio {float(x['seconds'])/float(w['seconds']):.2f}); its planned buffers "
          f"{int(x['stream_buffers_bytes'])/2**20:.1f} MiB")
PY
done
echo "bench_teacher: load after: $(cut -d' ' -f1-3 /proc/loadavg)"
