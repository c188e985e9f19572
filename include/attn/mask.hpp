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

namespace detail {

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

// s_ij <- -inf where causal_allows(i, j) is false: a suffix of each row.
template <class DS>
void apply_causal(Eigen::MatrixBase<DS>& scores) {
  using T = typename DS::Scalar;
  const Index n_q = scores.rows(), n_k = scores.cols();
  for (Index i = 0; i < n_q; ++i) {
    // Keys [0, i + n_k - n_q] stay; clamp to [0, n_k] for rows that see none or all of them.
    const Index keep = std::clamp<Index>(i + n_k - n_q + 1, 0, n_k);
    scores.row(i).tail(n_k - keep).setConstant(-std::numeric_limits<T>::infinity());
  }
}

}  // namespace detail
}  // namespace attn
