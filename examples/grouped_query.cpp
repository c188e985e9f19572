// Grouped-query attention as a decoder uses it: a causal prefill of a prompt, then one new token
// attending the whole cache through the decode path, with the log-sum-exp, on every thread
// OpenMP offers. The fused results are checked against the composed reference path. (The timing is
// of whatever flags the example was built with; the bench preset's -march=native is the fast one.)
#include <attn/attn.hpp>
#include <chrono>
#include <cstdio>

int main() {
  constexpr int heads = 8, kv_heads = 2, d = 64;  // 4 query heads share each key/value head
  constexpr Eigen::Index n = 512;
  const attn::Options causal{.causal = true, .heads = heads, .kv_heads = kv_heads};

  attn::Rng rng(42);
  attn::Matrix<float> q(n, heads * d), k(n, kv_heads * d), v(n, kv_heads * d);
  for (auto* m : {&q, &k, &v}) attn::glorot_uniform(*m, rng);

  // Prefill: every prompt position attends the positions up to itself.
  const auto t0 = std::chrono::steady_clock::now();
  const auto prefill = attn::attention_with_lse(q, k, v, causal);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const attn::Matrix<float> composed =
      attn::reference::scaled_dot_product_attention(q, k, v, causal);
  const float prefill_err = (prefill.output - composed).cwiseAbs().maxCoeff();

  // Decode: the last query alone against all n keys (bottom-right causal alignment: it sees all).
  const attn::Matrix<float> last = q.bottomRows(1);
  const auto step = attn::attention_with_lse(last, k, v, causal);
  const float step_err = (step.output - prefill.output.bottomRows(1)).cwiseAbs().maxCoeff();

  std::printf("prefill %ld x %d heads (%d KV heads), d %d: %.2f ms, %.1f GFLOP/s\n", long(n), heads,
              kv_heads, d, ms, 2.0 * heads * n * n * d / ms * 1e-6);
  std::printf("max |fused - composed| = %.2e; decode step vs prefill's last row = %.2e\n",
              prefill_err, step_err);
  std::printf("lse of the last row, head 0: %.4f (prefill) %.4f (decode)\n", prefill.lse(n - 1, 0),
              step.lse(0, 0));
  return prefill_err < 1e-4f && step_err < 1e-4f ? 0 : 1;
}
