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
#include <type_traits>

namespace attn::detail {

// exp(x) for packets of float with x <= 0 (or NaN), to about 1 ulp, in 17 operations where
// Eigen's general pexp takes about twice as many (its ldexp guards a range we never reach):
//   n = rint(x log2 e),  r = x - n ln 2  (ln 2 split in two, so r is exact),
//   exp(r) by Cephes' degree-6 polynomial on |r| <= ln 2 / 2,  2^n added to the exponent bits.
// The caller flushes x < log(min normal), so n >= -126 and the exponent add stays normal.
template <class P>
P exp_nonpositive(const P& x) {
  namespace ei = Eigen::internal;
  using PI = typename ei::unpacket_traits<P>::integer_packet;
  const P n = ei::print(ei::pmul(x, ei::pset1<P>(1.44269504088896341f)));
  P r = ei::pmadd(n, ei::pset1<P>(-0.693359375f), x);
  r = ei::pmadd(n, ei::pset1<P>(2.12194440e-4f), r);
  P y = ei::pset1<P>(1.9875691500e-4f);
  y = ei::pmadd(y, r, ei::pset1<P>(1.3981999507e-3f));
  y = ei::pmadd(y, r, ei::pset1<P>(8.3334519073e-3f));
  y = ei::pmadd(y, r, ei::pset1<P>(4.1665795894e-2f));
  y = ei::pmadd(y, r, ei::pset1<P>(1.6666665459e-1f));
  y = ei::pmadd(y, r, ei::pset1<P>(5.0000001201e-1f));
  y = ei::padd(ei::pmadd(y, ei::pmul(r, r), r), ei::pset1<P>(1.0f));
  const PI shift = ei::plogical_shift_left<23>(ei::pcast<P, PI>(n));
  return ei::preinterpret<P>(ei::padd(ei::preinterpret<PI>(y), shift));
}

template <class P>
inline constexpr bool has_exp_nonpositive =
    std::is_same_v<typename Eigen::internal::unpacket_traits<P>::type, float> &&
    !std::is_same_v<P, float>;

template <class T>
struct FlushedExp {
  // log of the smallest normal T: -87.34 in float, -708.40 in double.
  T cutoff = std::log(std::numeric_limits<T>::min());

  T operator()(const T& x) const { return x < cutoff ? T(0) : std::exp(x); }

  // Every caller passes x <= 0 (a score minus a maximum at least as large), which the fast float
  // exp relies on.
  template <class Packet>
  Packet packetOp(const Packet& x) const {
    namespace in = Eigen::internal;
    const Packet flush = in::pcmp_lt(x, in::pset1<Packet>(cutoff));
    if constexpr (has_exp_nonpositive<Packet>)
      return in::pandnot(exp_nonpositive(x), flush);
    else
      return in::pandnot(in::pexp(x), flush);
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
