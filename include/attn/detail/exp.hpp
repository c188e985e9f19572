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
//   exp(r) by Cephes' degree-6 polynomial on |r| <= ln 2 / 2,  times 2^n made from its bits.
// The caller flushes x < log(min normal), so n >= -126 and 2^n is a normal number.
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
  // 2^n built from its exponent bits, then multiplied in: unlike adding n to y's own exponent,
  // this stays right when y < 1 meets the lowest exponent (the product rounds correctly).
  const PI biased = ei::padd(ei::pcast<P, PI>(n), ei::pset1<PI>(127));
  return ei::pmul(y, ei::preinterpret<P>(ei::plogical_shift_left<23>(biased)));
}

#if defined(__AVX2__) && defined(__FMA__)
#define ATTN_HAVE_EXP_NONPOSITIVE_PD 1
#else
#define ATTN_HAVE_EXP_NONPOSITIVE_PD 0
#endif
#if defined(__AVX512F__) && defined(EIGEN_VECTORIZE_AVX512)
#define ATTN_HAVE_EXP_NONPOSITIVE_PD8 1
#else
#define ATTN_HAVE_EXP_NONPOSITIVE_PD8 0
#endif

// Vector packets of float, and the 4 doubles of AVX2 and 8 of AVX-512, have the fast exp; the
// rest use Eigen's pexp.
template <class P, class S = typename Eigen::internal::unpacket_traits<P>::type>
inline constexpr bool has_exp_nonpositive =
    (std::is_same_v<S, float> && !std::is_same_v<P, float>) ||
    (std::is_same_v<S, double> && Eigen::internal::unpacket_traits<P>::size == 4 &&
     ATTN_HAVE_EXP_NONPOSITIVE_PD) ||
    (std::is_same_v<S, double> && Eigen::internal::unpacket_traits<P>::size == 8 &&
     ATTN_HAVE_EXP_NONPOSITIVE_PD8);

#if ATTN_HAVE_EXP_NONPOSITIVE_PD
// The same for 4 doubles, to about 1 ulp: ln 2 in Cephes' two parts, exp(r) by its Taylor
// polynomial of degree 12 (the first omitted term is below 2e-16 relative on |r| <= ln 2 / 2),
// and 2^n through 64-bit integer lanes, which Eigen 3.4 has no packet for, hence the intrinsics.
inline Eigen::internal::Packet4d exp_nonpositive(const Eigen::internal::Packet4d& x) {
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fmadd_pd(n, _mm256_set1_pd(-6.93145751953125e-1), x);
  r = _mm256_fmadd_pd(n, _mm256_set1_pd(-1.42860682030941723212e-6), r);
  double inv_factorial = 1;
  for (int k = 2; k <= 12; ++k) inv_factorial /= k;  // folded by the compiler
  __m256d y = _mm256_set1_pd(inv_factorial);         // 1/12!
  for (int k = 12; k >= 1; --k) {
    inv_factorial *= k;  // 1/(k-1)!
    y = _mm256_fmadd_pd(y, r, _mm256_set1_pd(inv_factorial));
  }
  const __m128i biased = _mm_add_epi32(_mm256_cvtpd_epi32(n), _mm_set1_epi32(1023));
  const __m256i e = _mm256_slli_epi64(_mm256_cvtepi32_epi64(biased), 52);
  return _mm256_mul_pd(y, _mm256_castsi256_pd(e));
}

#endif

#if ATTN_HAVE_EXP_NONPOSITIVE_PD8
// The same for AVX-512's 8 doubles, step for step.
inline Eigen::internal::Packet8d exp_nonpositive(const Eigen::internal::Packet8d& x) {
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fmadd_pd(n, _mm512_set1_pd(-6.93145751953125e-1), x);
  r = _mm512_fmadd_pd(n, _mm512_set1_pd(-1.42860682030941723212e-6), r);
  double inv_factorial = 1;
  for (int k = 2; k <= 12; ++k) inv_factorial /= k;
  __m512d y = _mm512_set1_pd(inv_factorial);
  for (int k = 12; k >= 1; --k) {
    inv_factorial *= k;
    y = _mm512_fmadd_pd(y, r, _mm512_set1_pd(inv_factorial));
  }
  const __m256i biased = _mm256_add_epi32(_mm512_cvtpd_epi32(n), _mm256_set1_epi32(1023));
  const __m512i e = _mm512_slli_epi64(_mm512_cvtepi32_epi64(biased), 52);
  return _mm512_mul_pd(y, _mm512_castsi512_pd(e));
}
#endif

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
