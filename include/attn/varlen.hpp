// attn/varlen.hpp: a batch of sequences of different lengths in one call, packed row-wise with
// offsets (FlashAttention's "varlen" form): no padding, so no work on padding.
//
// Sequence s is query rows [offsets_q[s], offsets_q[s+1]) of Q and key rows [offsets_k[s],
// offsets_k[s+1]) of K and V, and attends only within itself:
//   O[rows of s] = attention(Q[rows of s], K[rows of s], V[rows of s])
// with every Options rule (causal, window, ALiBi, ...) aligned per sequence. Every (sequence, head,
// block of query tiles) is one work item of one parallel loop, so short and long sequences share
// the threads, and each output row is still computed by one thread in a fixed order.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/detail/flash.hpp"
#include "attn/detail/heads.hpp"
#include "attn/detail/parallel.hpp"

namespace attn {

namespace detail {

inline void check_offsets(const char* fn, const std::vector<Index>& offsets, Index rows,
                          const char* of) {
  if (offsets.empty() || offsets.front() != 0 || offsets.back() != rows)
    fail(fn, std::string("offsets of ") + of + " must start at 0 and end at its row count " +
                 std::to_string(rows) + " (" + std::to_string(offsets.size()) + " offsets given" +
                 (offsets.empty() ? std::string()
                                  : ", from " + std::to_string(offsets.front()) + " to " +
                                        std::to_string(offsets.back())) +
                 ")");
  for (std::size_t s = 1; s < offsets.size(); ++s)
    if (offsets[s] < offsets[s - 1])
      fail(fn, std::string("offsets of ") + of + " decrease at sequence " + std::to_string(s - 1) +
                   ": " + std::to_string(offsets[s - 1]) + " then " + std::to_string(offsets[s]));
}

template <int BlockQ, int BlockK, int Tiles, class T>
void varlen(const HeadLayout& l, const RowMajorRef<T>& q, const RowMajorRef<T>& k,
            const RowMajorRef<T>& v, const std::vector<Index>& offsets_q,
            const std::vector<Index>& offsets_k, const Options& o, const ScoreRules& rules,
            AttentionOutput<T>& r) {
  const Index sequences = static_cast<Index>(offsets_q.size()) - 1;
  r.output.resize(l.n_q, l.heads * l.d_v);
  r.lse.resize(l.n_q, l.heads);
  constexpr Index span = Index(BlockQ) * Tiles;
  // One problem per sequence, views into the packed storage, and the first work item of each.
  std::vector<FlashProblem<T>> problems;
  std::vector<Index> first_item{0};
  for (Index s = 0; s < sequences; ++s) {
    HeadLayout ls = l;
    ls.n_q = offsets_q[s + 1] - offsets_q[s];
    ls.n_k = offsets_k[s + 1] - offsets_k[s];
    const T* qs = q.data() + offsets_q[s] * q.outerStride();
    const T* ks = k.data() + offsets_k[s] * k.outerStride();
    const T* vs = v.data() + offsets_k[s] * v.outerStride();
    ScoreRules rs = rules;
    rs.band = KeyBand(ls.n_q, ls.n_k, o.causal, o.window);  // aligned within the sequence
    problems.push_back({ls, qs, q.outerStride(), ks, k.outerStride(), vs, v.outerStride(),
                        r.output.data() + offsets_q[s] * r.output.cols(), r.output.cols(),
                        r.lse.data() + offsets_q[s] * r.lse.cols(), r.lse.cols(), rs, o.threads});
    first_item.push_back(first_item.back() + l.heads * ((ls.n_q + span - 1) / span));
  }
  parallel_for(
      first_item.back(), o.threads,
      [&] { return FlashWorkspace<T, BlockQ, BlockK, Tiles>(l.d_k, l.d_v); },
      [&](Index item, auto& ws) {
        const Index s =
            std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin() - 1;
        const FlashProblem<T>& p = problems[s];
        const Index local = item - first_item[s], blocks = (p.l.n_q + span - 1) / span;
        flash_rows<BlockQ, BlockK, Tiles>(p, NoScoreMask{}, local / blocks, local % blocks * span,
                                          ws);
      });
}

template <class DQ, class DK, class DV>
AttentionOutput<typename DQ::Scalar> varlen_checked(const char* fn, const Eigen::MatrixBase<DQ>& q,
                                                    const Eigen::MatrixBase<DK>& k,
                                                    const Eigen::MatrixBase<DV>& v,
                                                    const std::vector<Index>& offsets_q,
                                                    const std::vector<Index>& offsets_k,
                                                    const Options& o) {
  using T = typename DQ::Scalar;
  auto l = head_layout(fn, q, k, o);
  add_values(fn, l, k, v);
  check_offsets(fn, offsets_q, q.rows(), "Q");
  check_offsets(fn, offsets_k, k.rows(), "K and V");
  if (offsets_q.size() != offsets_k.size())
    fail(fn, std::to_string(offsets_q.size() - 1) + " query sequences but " +
                 std::to_string(offsets_k.size() - 1) + " key sequences");
  const ScoreRules rules = checked_rules(fn, o, l);  // the band is set per sequence
  AttentionOutput<T> r;
  varlen<DefaultTiles<T>::q, DefaultTiles<T>::k, DefaultTiles<T>::group, T>(l, q, k, v, offsets_q,
                                                                            offsets_k, o, rules, r);
  return r;
}

}  // namespace detail

// O for every sequence of the packed batch: Q (sum n_q) x (heads·d_k), K (sum n_k) x
// (kv_heads·d_k), V (sum n_k) x (kv_heads·d_v); offsets_q and offsets_k hold one more entry than
// there are sequences, from 0 to the row counts (self-attention passes the same offsets twice).
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> varlen_attention(const Eigen::MatrixBase<DQ>& q,
                                             const Eigen::MatrixBase<DK>& k,
                                             const Eigen::MatrixBase<DV>& v,
                                             const std::vector<Index>& offsets_q,
                                             const std::vector<Index>& offsets_k,
                                             const Options& options = {}) {
  return detail::varlen_checked("varlen_attention", q, k, v, offsets_q, offsets_k, options).output;
}

// The same with each row's log-sum-exp (sum n_q) x heads.
template <class DQ, class DK, class DV>
AttentionOutput<typename DQ::Scalar> varlen_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                               const Eigen::MatrixBase<DK>& k,
                                                               const Eigen::MatrixBase<DV>& v,
                                                               const std::vector<Index>& offsets_q,
                                                               const std::vector<Index>& offsets_k,
                                                               const Options& options = {}) {
  return detail::varlen_checked("varlen_attention_with_lse", q, k, v, offsets_q, offsets_k,
                                options);
}

}  // namespace attn
