// attn/scaled_dot_product.hpp: scaled dot-product attention, O = softmax(Q K^T * scale [+ mask]) V.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <type_traits>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/mask.hpp"
#include "attn/softmax.hpp"

namespace attn {

// The composed path: the n_q x n_k scores are formed, normalised and multiplied by V, one step
// after another. It is plain on purpose: it is the reference every faster path is checked against.
namespace reference {
namespace detail {

using attn::detail::fail;
using attn::detail::shape;

template <class DQ, class DK>
void check_qk(const char* fn, const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k) {
  static_assert(std::is_same_v<typename DQ::Scalar, typename DK::Scalar>,
                "attn: Q, K and V must have the same scalar type");
  static_assert(attn::detail::is_supported_scalar<typename DQ::Scalar>,
                "attn: attention is defined for floating-point scalars (float, double)");
  if (q.cols() != k.cols())
    fail(fn, "Q is " + shape(q) + " and K is " + shape(k) +
                 "; they need the same number of columns (d_k)");
  if (q.cols() == 0) fail(fn, "Q is " + shape(q) + " and K is " + shape(k) + "; d_k must be > 0");
}

template <class DK, class DV>
void check_kv(const char* fn, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
  static_assert(std::is_same_v<typename DK::Scalar, typename DV::Scalar>,
                "attn: Q, K and V must have the same scalar type");
  if (k.rows() != v.rows())
    fail(fn, "K is " + shape(k) + " and V is " + shape(v) +
                 "; they need the same number of rows (n_k)");
}

template <class T, class DM>
void check_mask(const char* fn, const Eigen::DenseBase<DM>& mask, Index n_q, Index n_k) {
  static_assert(attn::detail::is_valid_mask<DM, T>,
                "attn: a mask holds bool (true = may attend) or the scalar type of Q, K and V "
                "(an additive bias)");
  if (mask.rows() != n_q || mask.cols() != n_k)
    fail(fn, "mask is " + shape(mask) + " but Q K^T is " + shape(n_q, n_k));
}

inline double checked_scale(const char* fn, const Options& o, Index d_k) {
  if (!o.scale) return 1.0 / std::sqrt(static_cast<double>(d_k));
  if (!std::isfinite(*o.scale))
    fail(fn, "Options::scale is " + std::to_string(*o.scale) + "; it must be finite");
  return *o.scale;
}

// W = softmax(Q K^T * scale + mask), with the mask applied by `mask_fn(scores)`.
template <class DQ, class DK, class MaskFn>
Matrix<typename DQ::Scalar> weights(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                    double scale, bool causal, MaskFn&& mask_fn) {
  using T = typename DQ::Scalar;
  Matrix<T> w(q.rows(), k.rows());
  // The scalar factor folds into the product, so Q is not scaled into a temporary.
  w.noalias() = (static_cast<T>(scale) * q) * k.transpose();
  mask_fn(w);
  if (causal) attn::detail::apply_causal(w);
  softmax_rows(w);
  return w;
}

struct NoMask {
  template <class DS>
  void operator()(Eigen::MatrixBase<DS>&) const {}
};

template <class DM>
struct WithMask {
  const Eigen::DenseBase<DM>& mask;
  template <class DS>
  void operator()(Eigen::MatrixBase<DS>& scores) const {
    attn::detail::apply_mask(scores, mask);
  }
};

template <class DV>
Matrix<typename DV::Scalar> weighted_values(const Matrix<typename DV::Scalar>& w,
                                            const Eigen::MatrixBase<DV>& v) {
  Matrix<typename DV::Scalar> o(w.rows(), v.cols());
  o.noalias() = w * v;
  return o;
}

}  // namespace detail

// W = softmax(Q K^T * scale): n_q x n_k. Every row sums to 1, or is all 0 when fully masked.
template <class DQ, class DK>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q,
                                              const Eigen::MatrixBase<DK>& k,
                                              const Options& options = {}) {
  constexpr const char* fn = "attention_weights";
  detail::check_qk(fn, q, k);
  const double scale = detail::checked_scale(fn, options, q.cols());
  return detail::weights(q, k, scale, options.causal, detail::NoMask{});
}

// W = softmax(Q K^T * scale + mask), mask boolean (true = may attend) or additive.
template <class DQ, class DK, class DM>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q,
                                              const Eigen::MatrixBase<DK>& k,
                                              const Eigen::DenseBase<DM>& mask,
                                              const Options& options = {}) {
  constexpr const char* fn = "attention_weights";
  detail::check_qk(fn, q, k);
  detail::check_mask<typename DQ::Scalar>(fn, mask, q.rows(), k.rows());
  const double scale = detail::checked_scale(fn, options, q.cols());
  return detail::weights(q, k, scale, options.causal, detail::WithMask<DM>{mask});
}

// O = softmax(Q K^T * scale) V.  Q: n_q x d_k, K: n_k x d_k, V: n_k x d_v  ->  O: n_q x d_v.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Options& options = {}) {
  constexpr const char* fn = "scaled_dot_product_attention";
  detail::check_qk(fn, q, k);
  detail::check_kv(fn, k, v);
  const double scale = detail::checked_scale(fn, options, q.cols());
  return detail::weighted_values(detail::weights(q, k, scale, options.causal, detail::NoMask{}), v);
}

// O = softmax(Q K^T * scale + mask) V, mask boolean (true = may attend) or additive.
template <class DQ, class DK, class DV, class DM>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Eigen::DenseBase<DM>& mask,
                                                         const Options& options = {}) {
  constexpr const char* fn = "scaled_dot_product_attention";
  detail::check_qk(fn, q, k);
  detail::check_kv(fn, k, v);
  detail::check_mask<typename DQ::Scalar>(fn, mask, q.rows(), k.rows());
  const double scale = detail::checked_scale(fn, options, q.cols());
  return detail::weighted_values(
      detail::weights(q, k, scale, options.causal, detail::WithMask<DM>{mask}), v);
}

}  // namespace reference

// The public entry points. Today they are the composed path; a fused kernel with the same
// contract takes their place without changing callers.
using reference::attention_weights;
using reference::scaled_dot_product_attention;

}  // namespace attn
