#!/usr/bin/env bash
# attn, ONNX Runtime and (if given) ggml interleaved, shape by shape, so that all see the same
# moment of a shared machine. Prints "system shape threads GFLOP/s" lines; take the median of the
# rounds.
#
# usage: benchmarks/side_by_side.sh ORT_DIR [ROUNDS] [GGML_BIN]
#   ORT_DIR: the scratch folder set up as in shared/peers/ort/README.md (models/ and node_modules/)
#   GGML_BIN: the binary that benchmarks/peers/ggml.sh builds (ggml flash attention, F32 K/V)
#   run after `cmake --workflow --preset bench`, which builds build/bench/benchmarks/bench_attention
set -euo pipefail
ort_dir=$1
rounds=${2:-3}
ggml=${3:-}
bench="$(cd "$(dirname "$0")/.." && pwd)/build/bench/benchmarks/bench_attention"
cd "$ort_dir"
for ((round = 1; round <= rounds; round++)); do
  for threads in 1 2; do
    for shape in S1 S2 S3 S4 S5 S6 D1; do
      # the binary's summary line for the shape: "  S3: naive -, attn 61.2, ..."
      gflops=$("$bench" --benchmark_filter="^attn/$shape/threads:$threads/" --benchmark_min_time=1 2>/dev/null |
        sed -n "s/^  $shape: .*attn \([0-9.]*\),.*/\1/p")
      echo "attn $shape $threads $gflops"
      node bench.js "$threads" "$shape" | awk -v t="$threads" '/GFLOP/ {print "ort-" $2, $1, t, $(NF-1)}'
      if [[ -n $ggml ]]; then "$ggml" "$threads" "$shape" f32 | awk '{print $1, $2, $3, $4}'; fi
    done
  done
done
