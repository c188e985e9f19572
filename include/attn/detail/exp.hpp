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

}  // namespace attn::detail

template <class T>
struct Eigen::internal::functor_traits<attn::detail::FlushedExp<T>> {
  enum {
    Cost = functor_traits<scalar_exp_op<T>>::Cost + 2 * NumTraits<T>::AddCost,
    PacketAccess = functor_traits<scalar_exp_op<T>>::PacketAccess
  };
};
