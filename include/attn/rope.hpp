// attn/rope.hpp: rotary position embedding (RoPE; Su et al. 2021, "RoFormer").
//
// Each head's vector is cut into pairs (x_a, x_b) and pair c of a token at position p is turned
// by the angle p·theta_c, theta_c = base^(-2c / rotary_dim):
//   x_a <- x_a cos(p theta_c) - x_b sin(p theta_c),
//   x_b <- x_b cos(p theta_c) + x_a sin(p theta_c).
// Rotating queries and keys so makes q_m · k_n depend on m - n alone, which is why a decoder can
// rotate each key once, by its own position, and cache it.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"

namespace attn {

// Which coordinates form a pair.
enum class RopeStyle {
  // (c, c + rotary_dim / 2): GPT-NeoX, and LLaMA as Hugging Face stores it ("rotate_half").
  half_split,
  // (2c, 2c + 1): GPT-J, and LLaMA's original checkpoints.
  interleaved,
};

struct Rope {
  double base = 10000;  // theta_c = base^(-2c / rotary_dim)
  RopeStyle style = RopeStyle::half_split;
  Index rotary_dim = 0;  // leading dims of each head that rotate; 0 = all of it
};

namespace detail {

inline Index checked_rotary_dim(const char* fn, Index cols, Index heads, const Rope& r) {
  if (heads < 1) fail(fn, "heads is " + std::to_string(heads) + "; it must be >= 1");
  if (cols % heads != 0)
    fail(fn, "x has " + std::to_string(cols) + " columns, which do not split into " +
                 std::to_string(heads) + " heads of equal width");
  const Index d_head = cols / heads, dim = r.rotary_dim == 0 ? d_head : r.rotary_dim;
  if (dim < 0 || dim > d_head || dim % 2 != 0)
    fail(fn, "Rope::rotary_dim is " + std::to_string(r.rotary_dim) + " with a head width of " +
                 std::to_string(d_head) + "; it must be even and at most the head width (0: all)");
  if (!(std::isfinite(r.base) && r.base > 0))
    fail(fn, "Rope::base is " + std::to_string(r.base) + "; it must be finite and > 0");
  return dim;
}

// Rotates every head of row i of x by position(i).
template <class Derived, class Position>
void rotate_rows(Eigen::MatrixBase<Derived>& x, Index heads, Index dim, const Rope& r,
                 Position&& position) {
  using T = typename Derived::Scalar;
  const Index d_head = x.cols() / heads, half = dim / 2;
  // Angles p·theta reach 1e5 rad and more, where even double's rounding of the product (and of
  // theta) costs 1e-11 rad. So theta is taken in long double as theta_hi + theta_lo, the product's
  // rounding error is recovered exactly by an FMA, and the small remainder e enters at first
  // order: cos(a + e) = cos a - e sin a, sin(a + e) = sin a + e cos a (the e^2 terms are < 1e-20).
  std::vector<double> theta_hi(half), theta_lo(half);
  for (Index c = 0; c < half; ++c) {
    const long double t =
        std::pow(static_cast<long double>(r.base),
                 -2.0L * static_cast<long double>(c) / static_cast<long double>(dim));
    theta_hi[c] = static_cast<double>(t);
    theta_lo[c] = static_cast<double>(t - static_cast<long double>(theta_hi[c]));
  }
  std::vector<T> cos(half), sin(half);
  for (Index i = 0; i < x.rows(); ++i) {
    const double p = static_cast<double>(position(i));
    for (Index c = 0; c < half; ++c) {
      const double a = p * theta_hi[c], e = std::fma(p, theta_hi[c], -a) + p * theta_lo[c];
      const double ca = std::cos(a), sa = std::sin(a);
      cos[c] = static_cast<T>(ca - e * sa);
      sin[c] = static_cast<T>(sa + e * ca);
    }
    for (Index h = 0; h < heads; ++h)
      for (Index c = 0; c < half; ++c) {
        const Index a = h * d_head + (r.style == RopeStyle::half_split ? c : 2 * c);
        const Index b = r.style == RopeStyle::half_split ? a + half : a + 1;
        const T xa = x(i, a), xb = x(i, b);
        x(i, a) = xa * cos[c] - xb * sin[c];
        x(i, b) = xb * cos[c] + xa * sin[c];
      }
  }
}

}  // namespace detail

// Rotates x in place, row i (a token) at position first_position + i, every one of its `heads`
// column blocks alike. x: n x (heads·d_head), the layout of Q and K in attn's kernels.
template <class Derived>
void apply_rope(Eigen::MatrixBase<Derived>& x, Index heads, Index first_position,
                const Rope& rope = {}) {
  static_assert(std::is_floating_point_v<typename Derived::Scalar>,
                "attn::apply_rope: x must hold float or double");
  const Index dim = detail::checked_rotary_dim("apply_rope", x.cols(), heads, rope);
  if (first_position < 0)
    detail::fail("apply_rope",
                 "first_position is " + std::to_string(first_position) + "; it must be >= 0");
  detail::rotate_rows(x, heads, dim, rope, [&](Index i) { return first_position + i; });
}

// The same with one position per row, as packed sequences of a batch need (each restarts at 0).
template <class Derived>
void apply_rope(Eigen::MatrixBase<Derived>& x, Index heads, const std::vector<Index>& positions,
                const Rope& rope = {}) {
  static_assert(std::is_floating_point_v<typename Derived::Scalar>,
                "attn::apply_rope: x must hold float or double");
  const Index dim = detail::checked_rotary_dim("apply_rope", x.cols(), heads, rope);
  if (static_cast<Index>(positions.size()) != x.rows())
    detail::fail("apply_rope", "x is " + detail::shape(x) + " but " +
                                   std::to_string(positions.size()) +
                                   " positions were given; one per row is needed");
  detail::rotate_rows(x, heads, dim, rope, [&](Index i) { return positions[i]; });
}

// Blocks and maps are temporaries: let them bind too.
template <class Derived, class Positions>
void apply_rope(Eigen::MatrixBase<Derived>&& x, Index heads, const Positions& positions,
                const Rope& rope = {}) {
  apply_rope(x, heads, positions, rope);
}

}  // namespace attn
