// attn/detail/exp.hpp: a vectorised exp that is exactly 0 where the true value is not a normal
// number.
//
// Eigen's packet exp clamps its argument from below, so exp(-inf) comes back as the smallest value
// it can produce (2.9e-39 in float) rather than 0. A masked score must get weight exactly 0, and
// subnormal weights would only slow the products that follow, so every x below log(min normal)
// is flushed to 0. NaN compares false and passes through as NaN.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>

namespace attn::detail {

template <class T>
struct FlushedExp {
  // log of the smallest normal T: -87.34 in float, -708.40 in double.
  T cutoff = std::log(std::numeric_limits<T>::min());

  T operator()(const T& x) const { return x < cutoff ? T(0) : std::exp(x); }

  template <class Packet>
  Packet packetOp(const Packet& x) const {
    namespace in = Eigen::internal;
    return in::pandnot(in::pexp(x), in::pcmp_lt(x, in::pset1<Packet>(cutoff)));
  }
};

// The shared edge rules of softmax, used by softmax_rows and OnlineSoftmax alike.
//
// row_j <- exp(row_j - m), m being the row's (or a running) maximum:
//   m = -inf: nothing may be attended; all 0, avoiding (-inf) - (-inf) = NaN;
//   m = +inf: the +inf entries share the row (1 there, 0 elsewhere: the limit as they grow);
//   m = NaN:  the whole row becomes NaN.
template <class Row, class T>
void exp_shifted(Row&& row, T m) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  if (m == -inf) {
    row.setZero();
  } else if (m == inf) {
    row = (row.array() == inf).template cast<T>().matrix();
  } else {
    row = (row.array() - m).unaryExpr(FlushedExp<T>{}).matrix();
  }
}

// exp(m_part - m) for a partial maximum m_part <= m, under the same rules: 1 when both are +inf or
// both -inf (an empty part, whose sums are 0 anyway), 0 when only m is +inf, NaN when m is NaN.
template <class T>
T exp_ratio(T m_part, T m) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  if (m == inf) return m_part == inf ? T(1) : T(0);
  if (m == -inf) return T(1);
  return FlushedExp<T>{}(m_part - m);
}

}  // namespace attn::detail

template <class T>
struct Eigen::internal::functor_traits<attn::detail::FlushedExp<T>> {
  enum {
    Cost = functor_traits<scalar_exp_op<T>>::Cost + 2 * NumTraits<T>::AddCost,
    PacketAccess = functor_traits<scalar_exp_op<T>>::PacketAccess
  };
};
