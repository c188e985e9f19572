// attn/online_softmax.hpp: the streaming softmax state that lets attention run over key tiles
// without ever holding a whole row of scores (Milakov & Gimelshein 2018; FlashAttention, Dao 2022).
//
// For each query row the state keeps the running maximum m and the running sum l of exp(s - m)
// over the keys seen so far; the caller keeps the unnormalised output acc = sum_j exp(s_j - m) v_j.
// A new tile of scores S moves the maximum to m' >= m, so everything accumulated so far is scaled
// by alpha = exp(m - m') before the tile's own terms exp(S - m') are added. After the last tile,
// O = acc / l, and log-sum-exp = m + log l. Two states over disjoint key ranges merge with the same
// rule, which is associative, so key ranges can be split across threads and combined in any fixed
// order.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>

#include "attn/common.hpp"
#include "attn/detail/exp.hpp"
#include "attn/detail/packet.hpp"

namespace attn {

template <class T, int Rows = Eigen::Dynamic>
class OnlineSoftmax {
  static_assert(std::is_floating_point_v<T>, "attn::OnlineSoftmax: T must be float or double");

 public:
  using Scalar = T;
  using Column = Eigen::Array<T, Rows, 1>;
  static constexpr int RowsAtCompileTime = Rows;

  // No key seen yet: m = -inf, l = 0.
  explicit OnlineSoftmax(Index rows = Rows == Eigen::Dynamic ? 0 : Rows)
      : max_(Column::Constant(rows, -inf)), sum_(Column::Zero(rows)) {}

  Index rows() const noexcept { return max_.rows(); }
  const Column& running_max() const noexcept { return max_; }
  const Column& running_sum() const noexcept { return sum_; }

  // Absorb a tile of (scaled, masked) scores, one row per query:
  //   m' = max(m, max_j s_j),  s_j <- exp(s_j - m'),  alpha = exp(m - m'),  l <- alpha l + sum_j
  //   s_j.
  // The scores become the tile's unnormalised weights; the caller must scale what it accumulated
  // so far by alpha (see rescale) before adding weights * V.
  template <class DS>
  void absorb(Eigen::MatrixBase<DS>& scores, Column& alpha) {
    static_assert(std::is_same_v<typename DS::Scalar, T>, "attn::OnlineSoftmax: scalar mismatch");
    eigen_assert(scores.rows() == rows());
    alpha.resize(rows());
    for (Index i = 0; i < rows(); ++i) alpha(i) = absorb_row(i, scores.row(i));
  }

  template <class DS>
  void absorb(Eigen::MatrixBase<DS>&& scores, Column& alpha) {
    absorb(scores, alpha);
  }

  // The same phase for a tile stored key-major, s_ij at tile[j * ld + i] for keys j < keys and
  // rows i < active_rows, as the fused kernel lays out its scores; rows past active_rows see no
  // keys and are left as they are. It runs down the rows a packet at a time, so the maxima and
  // sums need no horizontal reductions. alpha receives active_rows values.
  void absorb_key_major(T* tile, Index keys, Index ld, T* alpha, Index active_rows) {
    eigen_assert(active_rows >= 0 && active_rows <= rows());
    namespace ei = Eigen::internal;
    using P = detail::Packet<T>;
    constexpr int W = detail::packet_size<T>;
    const P neg_inf = ei::pset1<P>(-inf), zero = ei::pset1<P>(T(0));
    const detail::FlushedExp<T> fexp;
    Index i = 0;
    for (; i + W <= active_rows; i += W) {
      const P m_old = ei::ploadu<P>(max_.data() + i);
      P m = m_old;
      for (Index j = 0; j < keys; ++j) m = ei::pmax(m, ei::ploadu<P>(tile + j * ld + i));
      if (ei::predux_any(ei::pcmp_eq(m, ei::pset1<P>(inf)))) {
        // A +inf score: rare enough for the scalar rules (its row is shared by the +inf entries).
        for (Index r = i; r < i + W; ++r)
          alpha[r] = absorb_row(r, key_major_row(tile, keys, ld, r));
        continue;
      }
      // A row with nothing to attend yet keeps m = -inf; shifting by 0 instead gives weights
      // exp(-inf) = 0, where (-inf) - (-inf) would give NaN. A NaN score (which pmax may drop)
      // still makes its own weight, and so its row's sum and output, NaN.
      const P shift = ei::pselect(ei::pcmp_eq(m, neg_inf), zero, m);
      P sum = zero;
      for (Index j = 0; j < keys; ++j) {
        T* s = tile + j * ld + i;
        const P p = fexp.packetOp(ei::psub(ei::ploadu<P>(s), shift));
        ei::pstoreu(s, p);
        sum = ei::padd(sum, p);
      }
      const P a = fexp.packetOp(ei::psub(m_old, shift));
      ei::pstoreu(alpha + i, a);
      ei::pstoreu(sum_.data() + i, ei::pmadd(a, ei::ploadu<P>(sum_.data() + i), sum));
      ei::pstoreu(max_.data() + i, m);
    }
    for (; i < active_rows; ++i) alpha[i] = absorb_row(i, key_major_row(tile, keys, ld, i));
  }

  // A score s that carries no value (an attention sink) joins every row's denominator:
  //   m' = max(m, s),  alpha = exp(m - m'),  l <- alpha l + exp(s - m').
  // The caller scales its accumulator by alpha, as after absorb. Absorbed first, into a fresh
  // state, it makes m = s and l = 1.
  void absorb_sink(T s, Column& alpha) { absorb_sinks(Column::Constant(rows(), s), alpha); }

  // The same with a sink of its own for each row (s_i: one head's logit for that head's rows).
  void absorb_sinks(const Column& s, Column& alpha) {
    eigen_assert(s.rows() == rows());
    alpha.resize(rows());
    for (Index i = 0; i < rows(); ++i) {
      if (s(i) == -inf) {  // exp(-inf) adds nothing
        alpha(i) = T(1);
        continue;
      }
      const T m = std::isnan(max_(i)) || std::isnan(s(i)) ? nan : std::max(max_(i), s(i));
      alpha(i) = detail::exp_ratio(max_(i), m);
      sum_(i) = alpha(i) * sum_(i) + detail::exp_ratio(s(i), m);
      max_(i) = m;
    }
  }

  // acc_i <- alpha_i acc_i.
  template <class DA>
  static void rescale(Eigen::MatrixBase<DA>& acc, const Column& alpha) {
    acc = alpha.matrix().asDiagonal() * acc;
  }

  // Combine with the state of a disjoint range of keys; acc and other_acc are the two
  // accumulators, and the result goes to acc:
  //   M = max(m, m'),  l <- l e^(m - M) + l' e^(m' - M),  acc <- acc e^(m - M) + acc' e^(m' - M).
  template <class DA, class DB>
  void merge(const OnlineSoftmax& other, Eigen::MatrixBase<DA>& acc,
             const Eigen::MatrixBase<DB>& other_acc) {
    eigen_assert(other.rows() == rows() && acc.rows() == rows() && other_acc.rows() == rows());
    for (Index i = 0; i < rows(); ++i) {
      const T a = max_(i), b = other.max_(i);
      if (b == -inf) continue;  // the other range attended nothing
      if (a == -inf) {
        max_(i) = b;
        sum_(i) = other.sum_(i);
        acc.row(i) = other_acc.row(i);
        continue;
      }
      const T m = std::isnan(a) || std::isnan(b) ? nan : std::max(a, b);
      const T wa = detail::exp_ratio(a, m), wb = detail::exp_ratio(b, m);
      sum_(i) = wa * sum_(i) + wb * other.sum_(i);
      acc.row(i) = wa * acc.row(i) + wb * other_acc.row(i);
      max_(i) = m;
    }
  }

  // O_i = acc_i / l_i, in place; a row that attended nothing (l = 0) becomes 0.
  template <class DA>
  void finalize(Eigen::MatrixBase<DA>& acc) const {
    for (Index i = 0; i < rows(); ++i) {
      if (sum_(i) == T(0))
        acc.row(i).setZero();
      else
        acc.row(i) *= T(1) / sum_(i);
    }
  }

  template <class DA>
  void finalize(Eigen::MatrixBase<DA>&& acc) const {
    finalize(acc);
  }

  // lse_i = m_i + log l_i = log sum_j exp(s_ij): -inf for a row that attended nothing.
  Column log_sum_exp() const {
    Column lse(rows());
    for (Index i = 0; i < rows(); ++i)
      lse(i) = sum_(i) == T(0) ? -inf : max_(i) + std::log(sum_(i));
    return lse;
  }

 private:
  static constexpr T inf = std::numeric_limits<T>::infinity();
  static constexpr T nan = std::numeric_limits<T>::quiet_NaN();

  // Absorbs one row of scores in place and returns its alpha.
  template <class Row>
  T absorb_row(Index i, Row&& s) {
    const T tile_max = s.cols() ? s.template maxCoeff<Eigen::PropagateNaN>() : -inf;
    // NaN in either must win, so that a NaN score poisons its row and only its row.
    const T m = std::isnan(tile_max) || std::isnan(max_(i)) ? nan : std::max(max_(i), tile_max);
    detail::exp_shifted(s, m);
    const T alpha = detail::exp_ratio(max_(i), m);
    sum_(i) = alpha * sum_(i) + s.sum();
    max_(i) = m;
    return alpha;
  }

  static auto key_major_row(T* tile, Index keys, Index ld, Index i) {
    return Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>, 0, Eigen::InnerStride<>>(
        tile + i, keys, Eigen::InnerStride<>(ld));
  }

  Column max_, sum_;
};

}  // namespace attn
