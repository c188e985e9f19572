// attn/detail/heads.hpp: the multi-head, grouped-query column layout and its validation.
//
// Q is n_q x (heads·d_k), K is n_k x (kv_heads·d_k), V is n_k x (kv_heads·d_v). Head h reads
// column block h of Q and column block h / (heads / kv_heads) of K and V, so a group of query
// heads shares one key/value head (grouped-query attention; kv_heads = 1 is multi-query) and
// nothing is copied per head.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/mask.hpp"

namespace attn::detail {

struct HeadLayout {
  Index n_q = 0, n_k = 0;
  Index heads = 1, kv_heads = 1;
  Index d_k = 0, d_v = 0;

  Index group() const noexcept { return heads / kv_heads; }
  Index kv_head(Index h) const noexcept { return h / group(); }
};

inline std::string heads_text(Index heads, Index kv_heads) {
  return "heads = " + std::to_string(heads) + " and kv_heads = " + std::to_string(kv_heads);
}

// Checks the head counts and Q, K against each other; V is checked by add_values.
template <class DQ, class DK>
HeadLayout head_layout(const char* fn, const Eigen::MatrixBase<DQ>& q,
                       const Eigen::MatrixBase<DK>& k, const Options& o) {
  static_assert(std::is_same_v<typename DQ::Scalar, typename DK::Scalar>,
                "attn: Q, K and V must have the same scalar type");
  static_assert(is_supported_scalar<typename DQ::Scalar>,
                "attn: attention is defined for floating-point scalars (float, double)");
  if (o.heads < 1) fail(fn, "Options::heads is " + std::to_string(o.heads) + "; it must be >= 1");
  if (o.kv_heads < 0)
    fail(fn, "Options::kv_heads is " + std::to_string(o.kv_heads) +
                 "; it must be >= 1, or 0 for as many as heads");
  HeadLayout l;
  l.n_q = q.rows();
  l.n_k = k.rows();
  l.heads = o.heads;
  l.kv_heads = o.kv_heads == 0 ? o.heads : o.kv_heads;
  const std::string qk = "Q is " + shape(q) + " and K is " + shape(k);
  if (l.heads % l.kv_heads != 0)
    fail(fn, qk + "; " + heads_text(l.heads, l.kv_heads) +
                 ": heads must be a multiple of kv_heads (each key/value head serves a whole "
                 "group of query heads)");
  if (q.cols() % l.heads != 0)
    fail(fn, qk + "; Q's " + std::to_string(q.cols()) + " columns do not split into " +
                 std::to_string(l.heads) + " heads of equal width d_k");
  l.d_k = q.cols() / l.heads;
  if (k.cols() != l.kv_heads * l.d_k) {
    if (l.heads == 1 && l.kv_heads == 1)
      fail(fn, qk + "; they need the same number of columns (d_k)");
    fail(fn, qk + "; with " + heads_text(l.heads, l.kv_heads) + ", d_k = " + std::to_string(l.d_k) +
                 " and K needs kv_heads·d_k = " + std::to_string(l.kv_heads * l.d_k) + " columns");
  }
  if (l.d_k == 0) fail(fn, qk + "; d_k must be > 0");
  return l;
}

template <class DK, class DV>
void add_values(const char* fn, HeadLayout& l, const Eigen::MatrixBase<DK>& k,
                const Eigen::MatrixBase<DV>& v) {
  static_assert(std::is_same_v<typename DK::Scalar, typename DV::Scalar>,
                "attn: Q, K and V must have the same scalar type");
  if (k.rows() != v.rows())
    fail(fn, "K is " + shape(k) + " and V is " + shape(v) +
                 "; they need the same number of rows (n_k)");
  if (v.cols() % l.kv_heads != 0)
    fail(fn, "V is " + shape(v) + "; its " + std::to_string(v.cols()) +
                 " columns do not split into kv_heads = " + std::to_string(l.kv_heads) +
                 " blocks of equal width d_v");
  l.d_v = v.cols() / l.kv_heads;
}

template <class T, class DM>
void check_mask(const char* fn, const Eigen::DenseBase<DM>& mask, Index n_q, Index n_k) {
  static_assert(is_valid_mask<DM, T>,
                "attn: a mask holds bool (true = may attend) or the scalar type of Q, K and V "
                "(an additive bias)");
  if (mask.rows() != n_q || mask.cols() != n_k)
    fail(fn, "mask is " + shape(mask) + " but Q K^T is " + shape(n_q, n_k) +
                 " (one mask, shared by every head)");
}

// Everything that shapes a score beyond Q·K^T, validated against the layout: every kernel applies
//   s = scale q_i·k_j  ->  cap tanh(s / cap)  ->  - slope_h |p_i - j|  ->  mask  ->  band,
// then a softmax whose denominator holds exp(sink_h) as well.
struct ScoreRules {
  double scale = 1;
  KeyBand band;                   // query i may attend keys [band.begin(i), band.end(i))
  double softcap = 0;             // 0: none
  const double* alibi = nullptr;  // heads slopes, or null
  const double* sinks = nullptr;  // heads logits, or null

  // Whether soft-capping or ALiBi change the scaled scores at all.
  bool transforms() const noexcept { return softcap != 0 || alibi; }
};

inline ScoreRules checked_rules(const char* fn, const Options& o, const HeadLayout& l) {
  ScoreRules r;
  r.scale = 1.0 / std::sqrt(static_cast<double>(l.d_k));
  if (o.scale) {
    if (!std::isfinite(*o.scale))
      fail(fn, "Options::scale is " + std::to_string(*o.scale) + "; it must be finite");
    r.scale = *o.scale;
  }
  const auto bound = [&](Index b, const char* name) {
    if (b < 0 && b != Window::unbounded)
      fail(fn, std::string("Options::window.") + name + " is " + std::to_string(b) +
                   "; it must be >= 0, or Window::unbounded (-1)");
  };
  bound(o.window.left, "left");
  bound(o.window.right, "right");
  r.band = KeyBand(l.n_q, l.n_k, o.causal, o.window);
  if (!std::isfinite(o.softcap) || o.softcap < 0)
    fail(fn, "Options::softcap is " + std::to_string(o.softcap) +
                 "; it must be finite and >= 0 (0 for none)");
  r.softcap = o.softcap;
  const auto per_head = [&](const std::vector<double>& x, const char* name) -> const double* {
    if (x.empty()) return nullptr;
    if (static_cast<Index>(x.size()) != l.heads)
      fail(fn, std::string("Options::") + name + " has " + std::to_string(x.size()) +
                   " values but there are heads = " + std::to_string(l.heads) +
                   " (one per query head, or none)");
    for (double xi : x)
      if (!std::isfinite(xi))
        fail(fn, std::string("Options::") + name + " holds " + std::to_string(xi) +
                     "; every value must be finite");
    return x.data();
  };
  r.alibi = per_head(o.alibi_slopes, "alibi_slopes");
  r.sinks = per_head(o.sinks, "sinks");
  return r;
}

}  // namespace attn::detail
