// attn/scaled_dot_product.hpp: scaled dot-product attention, O = softmax(Q K^T * scale [+ mask]) V.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <type_traits>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/detail/heads.hpp"
#include "attn/mask.hpp"
#include "attn/softmax.hpp"

namespace attn {

// The composed path: the n_q x n_k scores are formed, normalised and multiplied by V, one step
// after another. It is plain on purpose: it is the reference every faster path is checked against.
namespace reference {
namespace detail {

using attn::detail::add_values;
using attn::detail::check_mask;
using attn::detail::checked_rules;
using attn::detail::head_layout;
using attn::detail::HeadLayout;
using attn::detail::ScoreRules;

// Head h's W = softmax(rules(Q K^T * scale)) with the user's mask applied by `mask_fn(scores)`:
// soft-capping, ALiBi, the mask and the band, in that order, then the softmax, with head h's sink
// as one more column of the row that is dropped afterwards.
template <class DQ, class DK, class MaskFn>
Matrix<typename DQ::Scalar> weights(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                    const ScoreRules& rules, Index h, MaskFn&& mask_fn) {
  using T = typename DQ::Scalar;
  const Index n_q = q.rows(), n_k = k.rows(), cols = n_k + (rules.sinks ? 1 : 0);
  Matrix<T> w(n_q, cols);
  auto s = w.leftCols(n_k);
  // The scalar factor folds into the product, so Q is not scaled into a temporary.
  s.noalias() = (static_cast<T>(rules.scale) * q) * k.transpose();
  if (rules.softcap != 0) {
    const T cap = static_cast<T>(rules.softcap);
    s = cap * (s.array() / cap).tanh().matrix();
  }
  if (rules.alibi) {
    const T slope = static_cast<T>(rules.alibi[h]);
    for (Index i = 0; i < n_q; ++i)
      for (Index j = 0; j < n_k; ++j)
        s(i, j) -= slope * static_cast<T>(std::abs(i + rules.band.offset - j));
  }
  mask_fn(s);
  attn::detail::apply_band(s, rules.band);
  if (rules.sinks) w.col(n_k).setConstant(static_cast<T>(rules.sinks[h]));
  softmax_rows(w);
  if (rules.sinks) return w.leftCols(n_k);
  return w;
}

struct NoMask {
  template <class DS>
  void operator()(DS&&) const {}
};

template <class DM>
struct WithMask {
  const Eigen::DenseBase<DM>& mask;
  template <class DS>
  void operator()(DS&& scores) const {
    attn::detail::apply_mask(scores, mask);
  }
};

// Head h's weights: its column block of Q against its group's column block of K.
template <class DQ, class DK, class MaskFn>
Matrix<typename DQ::Scalar> head_weights(const HeadLayout& l, Index h,
                                         const Eigen::MatrixBase<DQ>& q,
                                         const Eigen::MatrixBase<DK>& k, const ScoreRules& rules,
                                         MaskFn&& mask_fn) {
  return weights(q.middleCols(h * l.d_k, l.d_k), k.middleCols(l.kv_head(h) * l.d_k, l.d_k), rules,
                 h, mask_fn);
}

// Every head's weights, stacked vertically: (heads·n_q) x n_k.
template <class DQ, class DK, class MaskFn>
Matrix<typename DQ::Scalar> stacked_weights(const HeadLayout& l, const Eigen::MatrixBase<DQ>& q,
                                            const Eigen::MatrixBase<DK>& k, const ScoreRules& rules,
                                            MaskFn&& mask_fn) {
  if (l.heads == 1) return head_weights(l, 0, q, k, rules, mask_fn);
  Matrix<typename DQ::Scalar> w(l.heads * l.n_q, l.n_k);
  for (Index h = 0; h < l.heads; ++h)
    w.middleRows(h * l.n_q, l.n_q) = head_weights(l, h, q, k, rules, mask_fn);
  return w;
}

// O block h = W_h V block (h's group): n_q x (heads·d_v).
template <class DQ, class DK, class DV, class MaskFn>
Matrix<typename DQ::Scalar> attend(const HeadLayout& l, const Eigen::MatrixBase<DQ>& q,
                                   const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
                                   const ScoreRules& rules, MaskFn&& mask_fn) {
  Matrix<typename DQ::Scalar> o(l.n_q, l.heads * l.d_v);
  for (Index h = 0; h < l.heads; ++h)
    o.middleCols(h * l.d_v, l.d_v).noalias() =
        head_weights(l, h, q, k, rules, mask_fn) * v.middleCols(l.kv_head(h) * l.d_v, l.d_v);
  return o;
}

}  // namespace detail

// W = softmax(Q K^T * scale): n_q x n_k per head, stacked vertically for heads > 1. Every row sums
// to 1, or is all 0 when fully masked; with Options::sinks, the sink takes its share of the 1.
template <class DQ, class DK>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q,
                                              const Eigen::MatrixBase<DK>& k,
                                              const Options& options = {}) {
  constexpr const char* fn = "attention_weights";
  const auto l = detail::head_layout(fn, q, k, options);
  return detail::stacked_weights(l, q, k, detail::checked_rules(fn, options, l), detail::NoMask{});
}

// W = softmax(Q K^T * scale + mask), mask boolean (true = may attend) or additive, n_q x n_k and
// shared by every head.
template <class DQ, class DK, class DM>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q,
                                              const Eigen::MatrixBase<DK>& k,
                                              const Eigen::DenseBase<DM>& mask,
                                              const Options& options = {}) {
  constexpr const char* fn = "attention_weights";
  const auto l = detail::head_layout(fn, q, k, options);
  detail::check_mask<typename DQ::Scalar>(fn, mask, l.n_q, l.n_k);
  return detail::stacked_weights(l, q, k, detail::checked_rules(fn, options, l),
                                 detail::WithMask<DM>{mask});
}

// O = softmax(Q K^T * scale) V, per head.  Q: n_q x (heads·d_k), K: n_k x (kv_heads·d_k),
// V: n_k x (kv_heads·d_v)  ->  O: n_q x (heads·d_v).
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Options& options = {}) {
  constexpr const char* fn = "scaled_dot_product_attention";
  auto l = detail::head_layout(fn, q, k, options);
  detail::add_values(fn, l, k, v);
  return detail::attend(l, q, k, v, detail::checked_rules(fn, options, l), detail::NoMask{});
}

// O = softmax(Q K^T * scale + mask) V, mask boolean (true = may attend) or additive.
template <class DQ, class DK, class DV, class DM>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Eigen::DenseBase<DM>& mask,
                                                         const Options& options = {}) {
  constexpr const char* fn = "scaled_dot_product_attention";
  auto l = detail::head_layout(fn, q, k, options);
  detail::add_values(fn, l, k, v);
  detail::check_mask<typename DQ::Scalar>(fn, mask, l.n_q, l.n_k);
  return detail::attend(l, q, k, v, detail::checked_rules(fn, options, l),
                        detail::WithMask<DM>{mask});
}

}  // namespace reference

// The weights are materialised by definition, so the composed path is the public one.
using reference::attention_weights;

}  // namespace attn
