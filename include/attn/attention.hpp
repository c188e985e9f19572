// attn/attention.hpp: the fused scaled dot-product attention, the library's main entry point.
//
//   O_h = softmax(Q_h K_g^T * scale [+ mask]) V_g,   g = h / (heads / kv_heads),
//
// for every head h, computed tile by tile with an online softmax (attn/detail/flash.hpp) so that
// no n_q x n_k matrix is formed. It has the contract of the composed path in
// attn/scaled_dot_product.hpp (attn::reference::...), against which it is tested.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attn/common.hpp"
#include "attn/detail/flash.hpp"
#include "attn/detail/heads.hpp"
#include "attn/scaled_dot_product.hpp"

namespace attn {

// The output and the per-row log-sum-exp of the scaled (and masked) scores,
// lse(i, h) = log sum_j exp(s_hij): -inf for a row that may attend nothing. Together with Q and K
// it rebuilds the weights, w_hij = exp(s_hij - lse(i, h)), and merges partial results over key
// ranges; the backward pass needs it.
template <class T>
struct AttentionOutput {
  Matrix<T> output;  // n_q x (heads·d_v)
  Matrix<T> lse;     // n_q x heads
};

namespace detail {

// Tile sizes: BlockQ queries (a multiple of the QK micro-tile's two packets, and of the P·V
// micro-tile's 6 rows) by BlockK keys. 48 x 64 with four query tiles per key tile measured best
// on AVX2 (48 rows are 8 P·V micro-tiles and 3 Q·K micro-tiles of 16); with 16-float AVX-512
// packets the Q·K micro-tile is 32 rows, so the tile grows to 96 and two of them share a key
// tile: the same 192 query rows per packed key/value tile, in L2 at d <= 128.
template <class T>
struct DefaultTiles {
  static constexpr int q = std::max(48, std::lcm(2 * packet_size<T>, 6));
  static constexpr int k = 64;
  static constexpr int group = 192 / q > 0 ? 192 / q : 1;  // query tiles per packed K/V tile
  static_assert(q % (2 * packet_size<T>) == 0);
};
// Up to this many queries take the decode path (memory-bound: every key and value read once).
inline constexpr Index decode_queries = 4;
inline constexpr int decode_chunk = 256;

template <class T>
using RowMajorRef = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;

// Runs the fused kernel on validated inputs. Inputs that are not row-major with unit inner stride
// are copied once by the Ref; row-major matrices and their column blocks are read in place.
template <int BlockQ, int BlockK, int Tiles, class T, class Mask>
void fused(const HeadLayout& l, const RowMajorRef<T>& q, const RowMajorRef<T>& k,
           const RowMajorRef<T>& v, const Mask& mask, const ScoreRules& rules, int threads,
           Matrix<T>& out, Matrix<T>* lse) {
  out.resize(l.n_q, l.heads * l.d_v);
  if (lse) lse->resize(l.n_q, l.heads);
  if (l.n_q == 0 || (l.d_v == 0 && !lse)) return;
  const FlashProblem<T> p{.l = l,
                          .q = q.data(),
                          .ldq = q.outerStride(),
                          .k = k.data(),
                          .ldk = k.outerStride(),
                          .v = v.data(),
                          .ldv = v.outerStride(),
                          .o = out.data(),
                          .ldo = out.cols(),
                          .lse = lse ? lse->data() : nullptr,
                          .ldl = l.heads,
                          .rules = rules,
                          .threads = threads};
  if (l.n_q <= decode_queries)
    decode_attention<decode_chunk>(p, mask);
  else
    flash_attention<BlockQ, BlockK, Tiles>(p, mask);
}

template <class DQ, class DK, class DV, class Mask>
AttentionOutput<typename DQ::Scalar> fused_checked(const char* fn, const Eigen::MatrixBase<DQ>& q,
                                                   const Eigen::MatrixBase<DK>& k,
                                                   const Eigen::MatrixBase<DV>& v, const Mask& mask,
                                                   const Options& o, bool want_lse) {
  using T = typename DQ::Scalar;
  auto l = head_layout(fn, q, k, o);
  add_values(fn, l, k, v);
  const ScoreRules rules = checked_rules(fn, o, l);
  AttentionOutput<T> r;
  fused<DefaultTiles<T>::q, DefaultTiles<T>::k, DefaultTiles<T>::group, T>(
      l, q, k, v, mask, rules, o.threads, r.output, want_lse ? &r.lse : nullptr);
  return r;
}

// acc <- the attention over both key sets, from acc and part over two disjoint ones: per row i
// and head h, with M = max(lse_a, lse_b) and w_x = exp(lse_x - M),
//   O = (w_a O_a + w_b O_b) / (w_a + w_b),   lse = M + log(w_a + w_b).
// A row that neither part may attend stays 0 with lse -inf; a NaN stays in its row.
template <class T>
void merge_into(AttentionOutput<T>& acc, const AttentionOutput<T>& part) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index heads = acc.lse.cols(), d_v = heads ? acc.output.cols() / heads : 0;
  for (Index i = 0; i < acc.lse.rows(); ++i)
    for (Index h = 0; h < heads; ++h) {
      const T a = acc.lse(i, h), b = part.lse(i, h);
      if (b == neg_inf) continue;  // part adds nothing (also where both are empty)
      auto o = acc.output.row(i).segment(h * d_v, d_v);
      const auto ob = part.output.row(i).segment(h * d_v, d_v);
      if (a == neg_inf) {
        o = ob;
        acc.lse(i, h) = b;
        continue;
      }
      const T m = std::max(a, b), wa = std::exp(a - m), wb = std::exp(b - m), w = wa + wb;
      o = (wa / w) * o + (wb / w) * ob;
      acc.lse(i, h) = m + std::log(w);
    }
}

}  // namespace detail

// The attention over the union of two disjoint key sets, from the results (with lse) over each,
// for the same queries and heads: the associative rule by which key ranges split across calls,
// threads or machines combine exactly (up to rounding).
template <class T>
AttentionOutput<T> merge_attention(const AttentionOutput<T>& a, const AttentionOutput<T>& b) {
  using detail::shape;
  if (a.output.rows() != b.output.rows() || a.output.cols() != b.output.cols() ||
      a.lse.rows() != b.lse.rows() || a.lse.cols() != b.lse.cols() ||
      a.lse.rows() != a.output.rows() || a.lse.cols() == 0 || a.output.cols() % a.lse.cols() != 0)
    detail::fail("merge_attention", "outputs " + shape(a.output) + " and " + shape(b.output) +
                                        " with lse " + shape(a.lse) + " and " + shape(b.lse) +
                                        "; both must be n_q x (heads·d_v) with lse n_q x heads");
  AttentionOutput<T> r = a;
  detail::merge_into(r, b);
  return r;
}

// O = softmax(Q K^T * scale) V per head.  Q: n_q x (heads·d_k), K: n_k x (kv_heads·d_k),
// V: n_k x (kv_heads·d_v)  ->  O: n_q x (heads·d_v).
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Options& options = {}) {
  return detail::fused_checked("scaled_dot_product_attention", q, k, v, detail::NoScoreMask{},
                               options, false)
      .output;
}

// O = softmax(Q K^T * scale + mask) V, mask n_q x n_k, boolean (true = may attend) or additive,
// shared by every head.
template <class DQ, class DK, class DV, class DM>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Eigen::DenseBase<DM>& mask,
                                                         const Options& options = {}) {
  constexpr const char* fn = "scaled_dot_product_attention";
  detail::check_mask<typename DQ::Scalar>(fn, mask, q.rows(), k.rows());
  return detail::fused_checked(fn, q, k, v, detail::ScoreMask<DM>{mask.derived()}, options, false)
      .output;
}

// O and the log-sum-exp of every row and head.
template <class DQ, class DK, class DV>
AttentionOutput<typename DQ::Scalar> attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                        const Eigen::MatrixBase<DK>& k,
                                                        const Eigen::MatrixBase<DV>& v,
                                                        const Options& options = {}) {
  return detail::fused_checked("attention_with_lse", q, k, v, detail::NoScoreMask{}, options, true);
}

template <class DQ, class DK, class DV, class DM>
AttentionOutput<typename DQ::Scalar> attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                        const Eigen::MatrixBase<DK>& k,
                                                        const Eigen::MatrixBase<DV>& v,
                                                        const Eigen::DenseBase<DM>& mask,
                                                        const Options& options = {}) {
  constexpr const char* fn = "attention_with_lse";
  detail::check_mask<typename DQ::Scalar>(fn, mask, q.rows(), k.rows());
  return detail::fused_checked(fn, q, k, v, detail::ScoreMask<DM>{mask.derived()}, options, true);
}

}  // namespace attn
