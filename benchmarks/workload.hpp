// The shapes of shared/WORKLOAD.md, which every speed comparison of the project uses: ours in
// bench_attention and the peers' harnesses alike.
#pragma once

namespace attn_bench {

struct Shape {
  const char* id;
  int heads, n_q, n_k, d;
  bool causal;
  // FLOPs of the attention core: the two products, half of them for causal.
  double flops() const { return (causal ? 2.0 : 4.0) * heads * double(n_q) * n_k * d; }
};

inline constexpr Shape kShapes[] = {
    {"S1", 1, 512, 512, 64, false},   {"S2", 1, 2048, 2048, 64, false},
    {"S3", 8, 1024, 1024, 64, false}, {"S4", 8, 4096, 4096, 64, false},
    {"S5", 8, 2048, 2048, 64, true},  {"S6", 8, 1024, 1024, 128, false},
    {"D1", 32, 1, 4096, 128, false},
};

}  // namespace attn_bench
