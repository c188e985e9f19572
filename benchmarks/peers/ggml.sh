#!/usr/bin/env bash
# Builds benchmarks/peers/ggml_flash_attn.cpp against ggml's prebuilt CPU libraries from npm and
# prints the path of the binary. Nothing is downloaded from GitHub: the npm registry serves them.
#
# usage: benchmarks/peers/ggml.sh GGML_DIR
#   GGML_DIR: a scratch folder; the first run fills it with
#     npm pack @node-llama-cpp/linux-x64@3.22.1   (ggml of llama.cpp release v0.5.0 as node-llama-cpp names it)
#   then: GGML_DIR/ggml_flash_attn THREADS SHAPE [f32|f16]
# GGML_CPU picks the CPU build (zen4, icelake, haswell, ...); by default zen4 where AVX-512 is
# present, else haswell (AVX2+FMA).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir=$(mkdir -p "$1" && cd "$1" && pwd)
version=3.22.1
libs="$dir/package/bins/linux-x64"
if [[ ! -d $libs ]]; then
  (cd "$dir" && npm pack --silent "@node-llama-cpp/linux-x64@$version" >/dev/null &&
    tar xzf "node-llama-cpp-linux-x64-$version.tgz")
fi
if [[ -z ${GGML_CPU:-} ]]; then
  if grep -qw avx512f /proc/cpuinfo; then GGML_CPU=zen4; else GGML_CPU=haswell; fi
fi
# The CPU builds share one soname; link the chosen one under the name the loader looks for.
ln -sf "libggml-cpu-$GGML_CPU.so" "$libs/libggml-cpu.so"
g++ -std=c++20 -O2 -DNDEBUG -march=native -I"$root/include" -I/usr/include/eigen3 \
  "$root/benchmarks/peers/ggml_flash_attn.cpp" -o "$dir/ggml_flash_attn" \
  -L"$libs" -lggml-cpu -lggml-base -Wl,-rpath,"$libs"
echo "$dir/ggml_flash_attn"
