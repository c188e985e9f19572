// attn/self_attention.hpp: a single-head self-attention layer with learned Q/K/V projections.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "attn/attention.hpp"
#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/init.hpp"
#include "attn/projection.hpp"

namespace attn {

// forward(X) = softmax(Q K^T * scale [+ mask]) V  with  Q = X w_q + b_q, K = X w_k + b_k,
// V = X w_v + b_v.  X: n x d_model  ->  n x d_v.
//
// Dk and Dv are the key and value widths, fixed at compile time or Eigen::Dynamic. Weights start
// Xavier/Glorot uniform (see glorot_uniform) drawn from Rng(seed) in the order w_q, w_k, w_v, each
// row by row; biases start at 0. The same seed gives the same layer on every platform.
template <class T, int Dk = Eigen::Dynamic, int Dv = Dk>
class SelfAttention {
  static_assert(std::is_floating_point_v<T>, "attn::SelfAttention: T must be float or double");
  static_assert(Dk == Eigen::Dynamic || Dk > 0, "attn::SelfAttention: Dk must be > 0 or Dynamic");
  static_assert(Dv == Eigen::Dynamic || Dv > 0, "attn::SelfAttention: Dv must be > 0 or Dynamic");

 public:
  using Scalar = T;
  static constexpr int DkAtCompileTime = Dk;
  static constexpr int DvAtCompileTime = Dv;
  static constexpr std::uint64_t default_seed = 0x5eed;

  using WeightK = Eigen::Matrix<T, Eigen::Dynamic, Dk, Dk == 1 ? Eigen::ColMajor : Eigen::RowMajor>;
  using WeightV = Eigen::Matrix<T, Eigen::Dynamic, Dv, Dv == 1 ? Eigen::ColMajor : Eigen::RowMajor>;
  using BiasK = Eigen::Matrix<T, 1, Dk, Eigen::RowMajor>;
  using BiasV = Eigen::Matrix<T, 1, Dv, Eigen::RowMajor>;

  explicit SelfAttention(Index d_model,
                         std::uint64_t seed = default_seed) requires(Dk != Eigen::Dynamic &&
                                                                     Dv != Eigen::Dynamic)
      : SelfAttention(d_model, Dk, Dv, seed) {}

  SelfAttention(Index d_model, Index d_k, Index d_v, std::uint64_t seed = default_seed)
      : d_model_(checked_sizes(d_model, d_k, d_v)),
        d_k_(d_k),
        d_v_(d_v),
        w_q_(d_model, d_k),
        w_k_(d_model, d_k),
        w_v_(d_model, d_v),
        b_q_(BiasK::Zero(1, d_k)),
        b_k_(BiasK::Zero(1, d_k)),
        b_v_(BiasV::Zero(1, d_v)) {
    Rng rng(seed);
    glorot_uniform(w_q_, rng);
    glorot_uniform(w_k_, rng);
    glorot_uniform(w_v_, rng);
  }

  Index d_model() const noexcept { return d_model_; }
  Index d_k() const noexcept { return d_k_; }
  Index d_v() const noexcept { return d_v_; }

  // Parameters in the x·W + b convention. Their shapes are fixed at construction; forward checks.
  WeightK& w_q() noexcept { return w_q_; }
  WeightK& w_k() noexcept { return w_k_; }
  WeightV& w_v() noexcept { return w_v_; }
  BiasK& b_q() noexcept { return b_q_; }
  BiasK& b_k() noexcept { return b_k_; }
  BiasV& b_v() noexcept { return b_v_; }
  const WeightK& w_q() const noexcept { return w_q_; }
  const WeightK& w_k() const noexcept { return w_k_; }
  const WeightV& w_v() const noexcept { return w_v_; }
  const BiasK& b_q() const noexcept { return b_q_; }
  const BiasK& b_k() const noexcept { return b_k_; }
  const BiasV& b_v() const noexcept { return b_v_; }

  // X: n x d_model  ->  n x d_v.
  template <class DX>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& x, const Options& options = {}) const {
    check("SelfAttention::forward", x);
    return scaled_dot_product_attention(project(x, w_q_, b_q_), project(x, w_k_, b_k_),
                                        project(x, w_v_, b_v_), options);
  }

  // X: n x d_model, mask: n x n (boolean, true = may attend, or additive)  ->  n x d_v.
  template <class DX, class DM>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& x, const Eigen::DenseBase<DM>& mask,
                    const Options& options = {}) const {
    check("SelfAttention::forward", x);
    if (mask.rows() != x.rows() || mask.cols() != x.rows())
      detail::fail("SelfAttention::forward", "mask is " + detail::shape(mask) + " but X is " +
                                                 detail::shape(x) + "; the mask must be " +
                                                 detail::shape(x.rows(), x.rows()));
    return scaled_dot_product_attention(project(x, w_q_, b_q_), project(x, w_k_, b_k_),
                                        project(x, w_v_, b_v_), mask, options);
  }

  // softmax(Q K^T * scale): n x n, row-stochastic (rows fully masked by causal alignment are 0).
  template <class DX>
  Matrix<T> attention_weights(const Eigen::MatrixBase<DX>& x, const Options& options = {}) const {
    check("SelfAttention::attention_weights", x);
    return attn::attention_weights(project(x, w_q_, b_q_), project(x, w_k_, b_k_), options);
  }

 private:
  static Index checked_sizes(Index d_model, Index d_k, Index d_v) {
    const auto dims = "d_model = " + std::to_string(d_model) + ", d_k = " + std::to_string(d_k) +
                      ", d_v = " + std::to_string(d_v);
    if (d_model <= 0 || d_k <= 0 || d_v <= 0)
      detail::fail("SelfAttention", dims + "; every size must be > 0");
    if ((Dk != Eigen::Dynamic && d_k != Dk) || (Dv != Eigen::Dynamic && d_v != Dv))
      detail::fail("SelfAttention", dims + " but the layer is compiled for d_k = " +
                                        std::to_string(Dk) + ", d_v = " + std::to_string(Dv));
    return d_model;
  }

  // The mutable accessors let a caller resize a parameter; catch that here, not deep in a product.
  template <class DX>
  void check(const char* fn, const Eigen::MatrixBase<DX>& x) const {
    static_assert(std::is_same_v<typename DX::Scalar, T>,
                  "attn::SelfAttention: X must have the layer's scalar type");
    using detail::shape;
    if (x.cols() != d_model_)
      detail::fail(fn, "X is " + shape(x) + " but d_model is " + std::to_string(d_model_));
    const auto expect = [&](const auto& p, const char* name, Index rows, Index cols) {
      if (p.rows() != rows || p.cols() != cols)
        detail::fail(fn,
                     std::string(name) + "() is " + shape(p) + " but must be " + shape(rows, cols));
    };
    expect(w_q_, "w_q", d_model_, d_k_);
    expect(w_k_, "w_k", d_model_, d_k_);
    expect(w_v_, "w_v", d_model_, d_v_);
    expect(b_q_, "b_q", 1, d_k_);
    expect(b_k_, "b_k", 1, d_k_);
    expect(b_v_, "b_v", 1, d_v_);
  }

  Index d_model_, d_k_, d_v_;
  WeightK w_q_, w_k_;
  WeightV w_v_;
  BiasK b_q_, b_k_;
  BiasV b_v_;
};

}  // namespace attn
