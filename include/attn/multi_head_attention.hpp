// attn/multi_head_attention.hpp: the multi-head (and grouped-query) attention layer of a
// transformer, with its projections, rotary positions, a KV cache for decoding and packed batches.
//
//   Q = Xq w_q + b_q,  K = Xkv w_k + b_k,  V = Xkv w_v + b_v          (RoPE on Q and K if set)
//   O_h = softmax(Q_h K_g^T / sqrt(d_head) [+ rules]) V_g,  g = h / (heads / kv_heads)
//   Y = [O_0 ... O_{heads-1}] w_o + b_o
//
// With kv_heads = heads and the same parameters this is torch.nn.MultiheadAttention: its
// in_proj_weight blocks and out_proj.weight are the transposes of w_q, w_k, w_v and w_o.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/attention.hpp"
#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/init.hpp"
#include "attn/kv_cache.hpp"
#include "attn/projection.hpp"
#include "attn/rope.hpp"
#include "attn/scaled_dot_product.hpp"
#include "attn/varlen.hpp"

namespace attn {

template <class T>
class MultiHeadAttention {
  static_assert(std::is_floating_point_v<T>, "attn::MultiHeadAttention: T must be float or double");

 public:
  using Scalar = T;
  using Weight = Matrix<T>;
  using Bias = Eigen::Matrix<T, 1, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr std::uint64_t default_seed = 0x5eed;

  // heads heads of d_model / heads each, as many key/value heads.
  MultiHeadAttention(Index d_model, int heads, std::uint64_t seed = default_seed)
      : MultiHeadAttention(d_model, heads, heads, checked_head_dim(d_model, heads), seed) {}

  // Grouped-query attention: kv_heads key/value heads (heads a multiple of it; 1 is multi-query),
  // each head d_head wide, which need not be d_model / heads.
  MultiHeadAttention(Index d_model, int heads, int kv_heads, Index d_head,
                     std::uint64_t seed = default_seed)
      : d_model_(checked(d_model, heads, kv_heads, d_head)),
        heads_(heads),
        kv_heads_(kv_heads),
        d_head_(d_head),
        w_q_(d_model, heads * d_head),
        w_k_(d_model, kv_heads * d_head),
        w_v_(d_model, kv_heads * d_head),
        w_o_(heads * d_head, d_model),
        b_q_(Bias::Zero(heads * d_head)),
        b_k_(Bias::Zero(kv_heads * d_head)),
        b_v_(Bias::Zero(kv_heads * d_head)),
        b_o_(Bias::Zero(d_model)) {
    Rng rng(seed);
    glorot_uniform(w_q_, rng);
    glorot_uniform(w_k_, rng);
    glorot_uniform(w_v_, rng);
    glorot_uniform(w_o_, rng);
  }

  Index d_model() const noexcept { return d_model_; }
  int heads() const noexcept { return heads_; }
  int kv_heads() const noexcept { return kv_heads_; }
  Index d_head() const noexcept { return d_head_; }

  // Parameters in the x·W + b convention; shapes are fixed at construction and checked on use.
  Weight& w_q() noexcept { return w_q_; }
  Weight& w_k() noexcept { return w_k_; }
  Weight& w_v() noexcept { return w_v_; }
  Weight& w_o() noexcept { return w_o_; }
  Bias& b_q() noexcept { return b_q_; }
  Bias& b_k() noexcept { return b_k_; }
  Bias& b_v() noexcept { return b_v_; }
  Bias& b_o() noexcept { return b_o_; }
  const Weight& w_q() const noexcept { return w_q_; }
  const Weight& w_k() const noexcept { return w_k_; }
  const Weight& w_v() const noexcept { return w_v_; }
  const Weight& w_o() const noexcept { return w_o_; }
  const Bias& b_q() const noexcept { return b_q_; }
  const Bias& b_k() const noexcept { return b_k_; }
  const Bias& b_v() const noexcept { return b_v_; }
  const Bias& b_o() const noexcept { return b_o_; }

  // Rotary position embedding of Q and K, none by default. Self-attention rotates token i by
  // position i; decoding by its position in the cache; cross-attention each side from 0.
  std::optional<Rope>& rope() noexcept { return rope_; }
  const std::optional<Rope>& rope() const noexcept { return rope_; }

  // Self-attention: X n x d_model -> n x d_model.
  template <class DX>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& x, const Options& options = {}) const {
    return forward(x, x, options);
  }

  // Cross-attention: queries from Xq (n_q x d_model), keys and values from Xkv (n_kv x d_model).
  template <class DQ, class DKV>
  Matrix<T> forward(const Eigen::MatrixBase<DQ>& xq, const Eigen::MatrixBase<DKV>& xkv,
                    const Options& options = {}) const {
    const Options o = layer_options("MultiHeadAttention::forward", options, xq, xkv);
    auto [q, k, v] = project_qkv(xq, xkv, 0);
    return output(scaled_dot_product_attention(q, k, v, o));
  }

  // Cross- or self-attention (pass X twice) with a mask: n_q x n_kv, boolean (true = may attend)
  // or additive, shared by every head.
  template <class DQ, class DKV, class DM>
  Matrix<T> forward(const Eigen::MatrixBase<DQ>& xq, const Eigen::MatrixBase<DKV>& xkv,
                    const Eigen::DenseBase<DM>& mask, const Options& options = {}) const {
    const Options o = layer_options("MultiHeadAttention::forward", options, xq, xkv);
    auto [q, k, v] = project_qkv(xq, xkv, 0);
    return output(scaled_dot_product_attention(q, k, v, mask, o));
  }

  // Each head's n x n weights, softmax(Q_h K_g^T / sqrt(d_head) [+ rules]).
  template <class DX>
  std::vector<Matrix<T>> attention_weights(const Eigen::MatrixBase<DX>& x,
                                           const Options& options = {}) const {
    const Options o = layer_options("MultiHeadAttention::attention_weights", options, x, x);
    const Matrix<T> stacked = attn::attention_weights(rotated(x, w_q_, b_q_, heads_, 0),
                                                      rotated(x, w_k_, b_k_, kv_heads_, 0), o);
    std::vector<Matrix<T>> w;
    for (int h = 0; h < heads_; ++h) w.push_back(stacked.middleRows(h * x.rows(), x.rows()));
    return w;
  }

  // A cache for this layer's keys and values: max_tokens tokens, or a sliding window of them.
  KVCache<T> make_cache(Index max_tokens, const CachePolicy& policy = {}) const {
    return KVCache<T>(max_tokens, kv_heads_ * d_head_, kv_heads_ * d_head_, policy);
  }

  // Decoding: the keys and values of X_new (n x d_model, positions cache.position() onwards) join
  // the cache and X_new's queries attend the whole cache, causally (bottom-right). Feeding a
  // sequence through token by token or in chunks gives the causal forward of the whole of it.
  template <class DX>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& x_new, KVCache<T>& cache,
                    const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    const Options o = layer_options(fn, options, x_new, x_new);
    if (cache.key_cols() != kv_heads_ * d_head_ || cache.value_cols() != kv_heads_ * d_head_)
      detail::fail(fn, "the cache holds keys " + std::to_string(cache.key_cols()) + " and values " +
                           std::to_string(cache.value_cols()) +
                           " wide; this layer's are kv_heads·d_head = " +
                           std::to_string(kv_heads_ * d_head_));
    auto [q, k, v] = project_qkv(x_new, x_new, cache.position());
    return output(cached_attention(q, k, v, cache, o));
  }

  // A batch of self-attention sequences packed row-wise: sequence s is rows [offsets[s],
  // offsets[s + 1]) of X. One call projects them all, attends each within itself, threaded over
  // sequences and heads, and returns the rows in the same order. RoPE positions restart at 0 for
  // each sequence.
  template <class DX>
  Matrix<T> forward_varlen(const Eigen::MatrixBase<DX>& x, const std::vector<Index>& offsets,
                           const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward_varlen";
    const Options o = layer_options(fn, options, x, x);
    detail::check_offsets(fn, offsets, x.rows(), "X");
    Matrix<T> q = project(x, w_q_, b_q_), k = project(x, w_k_, b_k_), v = project(x, w_v_, b_v_);
    if (rope_) {
      std::vector<Index> positions(x.rows());
      for (std::size_t s = 0; s + 1 < offsets.size(); ++s)
        for (Index i = offsets[s]; i < offsets[s + 1]; ++i) positions[i] = i - offsets[s];
      apply_rope(q, heads_, positions, *rope_);
      apply_rope(k, kv_heads_, positions, *rope_);
    }
    return output(varlen_attention(q, k, v, offsets, offsets, o));
  }

 private:
  static Index checked_head_dim(Index d_model, int heads) {
    if (heads < 1 || d_model % heads != 0)
      detail::fail("MultiHeadAttention", "d_model = " + std::to_string(d_model) +
                                             " and heads = " + std::to_string(heads) +
                                             "; heads must be >= 1 and divide d_model");
    return d_model / heads;
  }

  static Index checked(Index d_model, int heads, int kv_heads, Index d_head) {
    const std::string dims =
        "d_model = " + std::to_string(d_model) + ", heads = " + std::to_string(heads) +
        ", kv_heads = " + std::to_string(kv_heads) + ", d_head = " + std::to_string(d_head);
    if (d_model <= 0 || heads < 1 || kv_heads < 1 || d_head <= 0)
      detail::fail("MultiHeadAttention", dims + "; every size must be > 0");
    if (heads % kv_heads != 0)
      detail::fail("MultiHeadAttention",
                   dims +
                       "; heads must be a multiple of kv_heads (each key/value head serves a "
                       "whole group of query heads)");
    return d_model;
  }

  // The layer's own heads go into Options; a caller may leave them at their defaults or repeat
  // them, but not contradict them. Also checks X and the parameters.
  template <class DQ, class DKV>
  Options layer_options(const char* fn, const Options& options, const Eigen::MatrixBase<DQ>& xq,
                        const Eigen::MatrixBase<DKV>& xkv) const {
    static_assert(std::is_same_v<typename DQ::Scalar, T> && std::is_same_v<typename DKV::Scalar, T>,
                  "attn::MultiHeadAttention: X must have the layer's scalar type");
    using detail::shape;
    const bool default_heads = options.heads == 1 && options.kv_heads == 0;
    const bool same_heads =
        options.heads == heads_ && (options.kv_heads == 0 ? heads_ : options.kv_heads) == kv_heads_;
    if (!default_heads && !same_heads)
      detail::fail(fn, "Options has heads = " + std::to_string(options.heads) +
                           " and kv_heads = " + std::to_string(options.kv_heads) +
                           " but the layer has heads = " + std::to_string(heads_) +
                           " and kv_heads = " + std::to_string(kv_heads_) + " (leave them unset)");
    if (xq.cols() != d_model_ || xkv.cols() != d_model_)
      detail::fail(fn, "Xq is " + shape(xq) + " and Xkv " + shape(xkv) + " but d_model is " +
                           std::to_string(d_model_) + " (self-attention passes X as both)");
    const auto expect = [&](const auto& p, const char* name, Index rows, Index cols) {
      if (p.rows() != rows || p.cols() != cols)
        detail::fail(fn,
                     std::string(name) + "() is " + shape(p) + " but must be " + shape(rows, cols));
    };
    const Index q_cols = heads_ * d_head_, kv_cols = kv_heads_ * d_head_;
    expect(w_q_, "w_q", d_model_, q_cols);
    expect(w_k_, "w_k", d_model_, kv_cols);
    expect(w_v_, "w_v", d_model_, kv_cols);
    expect(w_o_, "w_o", q_cols, d_model_);
    expect(b_q_, "b_q", 1, q_cols);
    expect(b_k_, "b_k", 1, kv_cols);
    expect(b_v_, "b_v", 1, kv_cols);
    expect(b_o_, "b_o", 1, d_model_);
    if (rope_) detail::checked_rotary_dim(fn, q_cols, heads_, *rope_);
    Options o = options;
    o.heads = heads_;
    o.kv_heads = kv_heads_;
    return o;
  }

  struct Projected {
    Matrix<T> q, k, v;
  };

  // x w + b for Q or K (`heads` heads), with RoPE from `first_position` if the layer has it.
  template <class DX>
  Matrix<T> rotated(const Eigen::MatrixBase<DX>& x, const Weight& w, const Bias& b, int heads,
                    Index first_position) const {
    Matrix<T> y = project(x, w, b);
    if (rope_) apply_rope(y, heads, first_position, *rope_);
    return y;
  }

  // Q from Xq, K and V from Xkv, RoPE from `first_position` on Q and K.
  template <class DQ, class DKV>
  Projected project_qkv(const Eigen::MatrixBase<DQ>& xq, const Eigen::MatrixBase<DKV>& xkv,
                        Index first_position) const {
    return {rotated(xq, w_q_, b_q_, heads_, first_position),
            rotated(xkv, w_k_, b_k_, kv_heads_, first_position), project(xkv, w_v_, b_v_)};
  }

  Matrix<T> output(const Matrix<T>& heads_out) const { return project(heads_out, w_o_, b_o_); }

  Index d_model_;
  int heads_, kv_heads_;
  Index d_head_;
  Weight w_q_, w_k_, w_v_, w_o_;
  Bias b_q_, b_k_, b_v_, b_o_;
  std::optional<Rope> rope_;
};

}  // namespace attn
