#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU: build with the CUDA backend
# into build-cuda, run the tests labelled gpu (every op and a whole RILQ
# training step against the CPU backend: tests/gpu_ops.c, tests/gpu_train.c),
# then the GPU benchmark (tools/bench/bench_gpu_rilq.c: tokens/s and MFU of
# RILQ updates at LLaMA-2-7B shape), and print a summary.
# Fails loudly when no GPU is visible (nvidia-smi) or when a gpu test is
# skipped: here a skip means the CUDA backend could not be created.
#   BENCH_ARGS   extra arguments for bench_gpu_rilq (e.g. "--peak-tflops 989 --steps 5")
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here" || exit 1
jobs="$(nproc 2>/dev/null || echo 2)"

die() {
  echo "gpu_test: FAILED: $*" >&2
  exit 1
}

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: no NVIDIA driver on this machine"
gpus="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)" ||
  die "nvidia-smi sees no GPU: $gpus"
[ -n "$gpus" ] || die "nvidia-smi lists no GPU"
command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found (install the CUDA toolkit)"
command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
echo "== GPU: $gpus"
echo "== nvcc: $(nvcc --version | tail -n 1)"

echo "== build (Release, CUDA) into build-cuda"
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DRILQ_CUDA=ON >/dev/null || die "cmake configure"
cmake --build build-cuda -j"$jobs" 2>&1 | grep -E "error|warning" || true
cmake --build build-cuda -j"$jobs" >/dev/null || die "build"

echo "== ctest -L gpu"
log="$(mktemp)"
(cd build-cuda && ctest -L gpu --output-on-failure 2>&1) | tee "$log"
tests_rc=${PIPESTATUS[0]}
skipped="$(grep -c '\*\*\*Skipped' "$log" || true)"
passed="$(grep -cE 'Test +#[0-9]+: .* Passed' "$log" || true)"
failed="$(grep -cE '\*\*\*Failed|\*\*\*Exception|\*\*\*Timeout' "$log" || true)"

echo "== bench_gpu_rilq ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
bench="$(./build-cuda/bench_gpu_rilq --device cuda ${BENCH_ARGS:-} 2>&1)"
bench_rc=$?
echo "$bench"

echo "== summary"
echo "GPU:        $gpus"
echo "gpu tests:  $passed passed, $failed failed, $skipped skipped"
echo "benchmark:  $(echo "$bench" | grep -E 'tokens/s|MFU|unavailable' | sed 's/^ *//' | paste -sd ';' -)"
rm -f "$log"
[ "$skipped" = 0 ] || die "$skipped gpu test(s) skipped: the CUDA backend could not be created on a machine with a GPU"
[ "$tests_rc" = 0 ] || die "gpu tests failed"
echo "$bench" | grep -q "unavailable" && die "the benchmark found no CUDA backend"
[ "$bench_rc" = 0 ] || die "benchmark exited with $bench_rc"
echo "gpu_test: OK"
