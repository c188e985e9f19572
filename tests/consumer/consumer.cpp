// A program as a user of attn would write it: it only needs the installed or vendored package.
#include <attn/attn.hpp>
#include <cmath>
#include <iostream>

int main() {
  attn::SelfAttention<float, 4> layer(/*d_model=*/8, /*seed=*/1);
  const attn::Matrix<float> x = attn::Matrix<float>::Random(3, 8);
  const attn::Matrix<float> w = layer.attention_weights(x);
  for (Eigen::Index i = 0; i < w.rows(); ++i) {
    if (std::abs(w.row(i).sum() - 1.0f) > 1e-5f) {
      std::cerr << "row " << i << " of the weights does not sum to 1\n";
      return 1;
    }
  }
  std::cout << "attn " << ATTN_VERSION_MAJOR << '.' << ATTN_VERSION_MINOR << " consumer ok\n";
  return 0;
}
