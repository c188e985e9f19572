// attn/mask.hpp: the causal rule and how masks act on a matrix of scaled scores.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <type_traits>

#include "attn/common.hpp"

namespace attn {

// Query i may attend key j iff j <= i + (n_k - n_q). Bottom-right alignment: with n_q < n_k the
// queries are the last n_q positions of the key sequence (a KV cache); with n_q > n_k the first
// n_q - n_k queries see no key at all, so their rows are fully masked.
constexpr bool causal_allows(Index i, Index j, Index n_q, Index n_k) noexcept {
  return j <= i + (n_k - n_q);
}

// The boolean mask (true = may attend) equivalent to Options::causal.
inline Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> causal_mask(Index n_q,
                                                                                        Index n_k) {
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(n_q, n_k);
  for (Index i = 0; i < n_q; ++i)
    for (Index j = 0; j < n_k; ++j) m(i, j) = causal_allows(i, j, n_q, n_k);
  return m;
}

// Query i may attend key j iff p_i - left <= j <= p_i + right, p_i = i + (n_k - n_q), for each
// bound of the window that is not Window::unbounded.
constexpr bool window_allows(Index i, Index j, Index n_q, Index n_k, const Window& w) noexcept {
  const Index p = i + (n_k - n_q);
  return (w.left == Window::unbounded || j >= p - w.left) &&
         (w.right == Window::unbounded || j <= p + w.right);
}

// The boolean mask (true = may attend) equivalent to Options::window.
inline Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> window_mask(
    Index n_q, Index n_k, const Window& w) {
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(n_q, n_k);
  for (Index i = 0; i < n_q; ++i)
    for (Index j = 0; j < n_k; ++j) m(i, j) = window_allows(i, j, n_q, n_k, w);
  return m;
}

namespace detail {

// The keys [begin(i), end(i)) that query i may attend under the causal rule and the window
// together: a band around the diagonal p_i = i + offset. Every kernel skips what lies outside.
struct KeyBand {
  Index n_k = 0;
  Index offset = 0;  // the key position of query 0: n_k - n_q for the usual alignment
  Index left = Window::unbounded, right = Window::unbounded;

  KeyBand() = default;
  KeyBand(Index n_q, Index n_k_, bool causal, const Window& w)
      : n_k(n_k_), offset(n_k_ - n_q), left(w.left), right(causal ? 0 : w.right) {}
  // Query 0 at key position `offset` of these n_k keys: for a key range cut out of a longer
  // sequence (a KV cache's segment), offset = (query 0's position) - (the range's first key's).
  static KeyBand at(Index n_k, Index offset, bool causal, const Window& w) {
    KeyBand b(0, n_k, causal, w);
    b.offset = offset;
    return b;
  }

  Index begin(Index i) const noexcept {
    return left == Window::unbounded ? 0 : std::clamp<Index>(i + offset - left, 0, n_k);
  }
  Index end(Index i) const noexcept {
    return right == Window::unbounded ? n_k : std::clamp<Index>(i + offset + right + 1, 0, n_k);
  }
  bool full() const noexcept { return left == Window::unbounded && right == Window::unbounded; }
};

// A mask is boolean (true = attend) or additive (a bias of the scores' own scalar type).
template <class Mask, class T>
inline constexpr bool is_valid_mask =
    std::is_same_v<typename Mask::Scalar, bool> || std::is_same_v<typename Mask::Scalar, T>;

// s_ij <- (mask_ij ? s_ij : -inf) for a boolean mask, s_ij + mask_ij for an additive one.
// The boolean form replaces the score, so a masked NaN score does not reach its row.
template <class DS, class DM>
void apply_mask(Eigen::MatrixBase<DS>& scores, const Eigen::DenseBase<DM>& mask) {
  using T = typename DS::Scalar;
  if constexpr (std::is_same_v<typename DM::Scalar, bool>) {
    scores = mask.derived().matrix().select(scores.derived(), -std::numeric_limits<T>::infinity());
  } else {
    scores += mask.derived().matrix();
  }
}

// s_ij <- -inf outside the band [begin(i), end(i)): a prefix and a suffix of each row.
template <class DS>
void apply_band(Eigen::MatrixBase<DS>& scores, const KeyBand& band) {
  using T = typename DS::Scalar;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index n_k = scores.cols();
  for (Index i = 0; i < scores.rows(); ++i) {
    const Index b = band.begin(i), e = std::max(b, band.end(i));
    scores.row(i).head(b).setConstant(neg_inf);
    scores.row(i).tail(n_k - e).setConstant(neg_inf);
  }
}

}  // namespace detail
}  // namespace attn
