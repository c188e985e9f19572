// Builds a small self-attention layer, runs it over a short sequence and prints who attends whom.
#include <attn/attn.hpp>
#include <iomanip>
#include <iostream>

int main() {
  constexpr Eigen::Index d_model = 16, n = 6;

  // d_k = d_v = 8, fixed at compile time; the seed makes the Glorot-uniform weights reproducible.
  attn::SelfAttention<float, 8> layer(d_model, /*seed=*/2026);

  // A toy "sentence": six token embeddings.
  attn::Rng rng(7);
  attn::Matrix<float> x(n, d_model);
  attn::glorot_uniform(x, rng);
  x *= 2.0f;

  const attn::Matrix<float> out = layer.forward(x, {.causal = true});
  const attn::Matrix<float> w = layer.attention_weights(x, {.causal = true});

  std::cout << "causal attention weights (row i: how token i spreads its attention)\n"
            << std::fixed << std::setprecision(3);
  for (Eigen::Index i = 0; i < n; ++i) {
    std::cout << "  token " << i << ":";
    for (Eigen::Index j = 0; j < n; ++j) std::cout << ' ' << w(i, j);
    std::cout << "   sum " << w.row(i).sum() << '\n';
  }
  std::cout << "output: " << out.rows() << " x " << out.cols() << ", first row:" << out.row(0)
            << '\n';
  return 0;
}
