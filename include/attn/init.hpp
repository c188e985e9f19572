// attn/init.hpp: reproducible parameter initialisation.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <random>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"

namespace attn {

// A seeded source of uniform numbers that gives the same values on every platform: the
// std::mt19937_64 sequence is fixed by the standard, and the conversion to [0, 1) is ours
// (std::uniform_real_distribution is implementation-defined).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  // u ~ U[0, 1), on a grid of 2^-53.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 engine_;
};

// Xavier/Glorot uniform (Glorot & Bengio 2010): w_ij ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)),
// which keeps the variance of activations and gradients about equal through the layer. Entries
// are drawn in row-major order, whatever the storage order of w.
template <class Derived>
void glorot_uniform(Eigen::MatrixBase<Derived>& w, Rng& rng) {
  using T = typename Derived::Scalar;
  const Index fan_in = w.rows(), fan_out = w.cols();
  if (fan_in + fan_out == 0) return;
  const double a = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) w(i, j) = static_cast<T>(a * (2.0 * rng.uniform() - 1.0));
}

template <class Derived>
void glorot_uniform(Eigen::MatrixBase<Derived>&& w, Rng& rng) {
  glorot_uniform(w, rng);
}

}  // namespace attn
