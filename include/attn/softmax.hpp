// attn/softmax.hpp: the numerically stable row softmax.
#pragma once

#include <Eigen/Core>
#include <limits>

#include "attn/common.hpp"
#include "attn/detail/exp.hpp"

namespace attn {

// s_ij <- exp(s_ij - m_i) / sum_k exp(s_ik - m_i),  m_i = max_k s_ik.
//
// Any shift m_i gives the same mathematical result; the row maximum keeps every exponent <= 0, so
// nothing overflows and the largest term is exactly 1, which keeps the denominator >= 1. Finite
// scores of any magnitude (float's ±3e38 included) are therefore safe. Edge rows, by definition:
//   - -inf entries get weight exactly 0 (so does any weight below the smallest normal number); a
//   row that is entirely -inf (fully masked, or no columns to
//     attend) becomes all zeros rather than (-inf) - (-inf) = NaN;
//   - if some entries are +inf, they share the row equally (the limit of softmax as they grow);
//   - a NaN anywhere in a row makes that whole row NaN, and no other row.
template <class Derived>
void softmax_rows(Eigen::MatrixBase<Derived>& scores) {
  using T = typename Derived::Scalar;
  static_assert(std::is_floating_point_v<T>, "attn::softmax_rows: scores must be float or double");
  if (scores.cols() == 0) return;
  for (Index i = 0; i < scores.rows(); ++i) {
    auto row = scores.row(i);
    // PropagateNaN: a NaN must become the max, or the row would come back finite and wrong.
    const T m = row.template maxCoeff<Eigen::PropagateNaN>();
    detail::exp_shifted(row, m);
    if (m != -std::numeric_limits<T>::infinity()) row *= T(1) / row.sum();
  }
}

// Lets temporaries such as m.block(...) or m.row(i) be normalised in place.
template <class Derived>
void softmax_rows(Eigen::MatrixBase<Derived>&& scores) {
  softmax_rows(scores);
}

}  // namespace attn
