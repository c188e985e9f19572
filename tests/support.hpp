// Test support: an independent long-double reference for attention, tolerances kept in one place,
// and comparison helpers. Nothing here calls the library's kernels.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

namespace attn_test {

using Index = Eigen::Index;
using Real = long double;
using RealMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using BoolMatrix = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Relative tolerances against the long-double reference (the contract).
template <class T>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double rel = 2e-5;
};
template <>
struct Tolerance<double> {
  static constexpr double rel = 1e-12;
};

using Scalars = ::testing::Types<float, double>;

// Entries ~ N(0, sigma^2), reproducible from the seed.
template <class T>
Mat<T> normal(Index rows, Index cols, std::uint64_t seed, double sigma = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, sigma);
  Mat<T> m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = static_cast<T>(dist(gen));
  return m;
}

inline BoolMatrix random_bool(Index rows, Index cols, std::uint64_t seed, double p_true = 0.7) {
  std::mt19937_64 gen(seed);
  std::bernoulli_distribution dist(p_true);
  BoolMatrix m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = dist(gen);
  return m;
}

template <class Derived>
RealMatrix to_real(const Eigen::MatrixBase<Derived>& m) {
  RealMatrix r(m.rows(), m.cols());
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) r(i, j) = static_cast<Real>(m(i, j));
  return r;
}

// The textbook definition, in long double, with plain loops:
//   s_ij = scale * sum_c q_ic k_jc, masked entries -inf, causal: allowed iff j <= i + n_k - n_q;
//   w_ij = exp(s_ij - max_j s_ij) / sum_j exp(...), or 0 for a row with no allowed key;
//   o_ic = sum_j w_ij v_jc.
struct Reference {
  RealMatrix w;    // weights, n_q x n_k
  RealMatrix o;    // output, n_q x d_v
  RealMatrix mag;  // sum_j w_ij |v_jc|: the size of the terms each output entry sums
  RealMatrix lse;  // log sum_j exp(s_ij), n_q x 1: -inf for a row with no allowed key
};

// Everything beyond the product, written from the definitions. Query i sits at key position
// p_i = i + n_k - n_q.
struct RefMask {
  const BoolMatrix* allow = nullptr;  // true = may attend
  const RealMatrix* bias = nullptr;   // additive
  bool causal = false;                // j <= p_i
  Index left = -1, right = -1;        // p_i - left <= j <= p_i + right, each unless -1
  Real softcap = 0;                   // s <- cap tanh(s / cap), first
  std::vector<double> alibi = {};     // s -= slope_h |p_i - j|, per head
  std::vector<double> sinks = {};     // exp(sink_h) joins the denominator, per head
};

// Row softmax of s; a row with no finite entry (all -inf) becomes 0.
inline RealMatrix reference_softmax(const RealMatrix& s) {
  RealMatrix w = RealMatrix::Zero(s.rows(), s.cols());
  for (Index i = 0; i < s.rows(); ++i) {
    Real m = -std::numeric_limits<Real>::infinity();
    for (Index j = 0; j < s.cols(); ++j) m = std::max(m, s(i, j));
    if (m == -std::numeric_limits<Real>::infinity()) continue;
    Real sum = 0;
    for (Index j = 0; j < s.cols(); ++j) sum += std::exp(s(i, j) - m);
    for (Index j = 0; j < s.cols(); ++j) w(i, j) = std::exp(s(i, j) - m) / sum;
  }
  return w;
}

inline Reference reference_attention(const RealMatrix& q, const RealMatrix& k, const RealMatrix& v,
                                     Real scale, const RefMask& mask = {}, Index head = 0) {
  constexpr Real neg_inf = -std::numeric_limits<Real>::infinity();
  const Index n_q = q.rows(), n_k = k.rows(), d = q.cols();
  RealMatrix s(n_q, n_k);
  for (Index i = 0; i < n_q; ++i)
    for (Index j = 0; j < n_k; ++j) {
      const Index p = i + n_k - n_q;
      Real dot = 0;
      for (Index c = 0; c < d; ++c) dot += q(i, c) * k(j, c);
      s(i, j) = scale * dot;
      if (mask.softcap != 0) s(i, j) = mask.softcap * std::tanh(s(i, j) / mask.softcap);
      if (!mask.alibi.empty()) s(i, j) -= Real(mask.alibi[head]) * Real(std::abs(p - j));
      if (mask.bias) s(i, j) += (*mask.bias)(i, j);
      if ((mask.allow && !(*mask.allow)(i, j)) || (mask.causal && j > p) ||
          (mask.left >= 0 && j < p - mask.left) || (mask.right >= 0 && j > p + mask.right))
        s(i, j) = neg_inf;
    }
  const Real sink = mask.sinks.empty() ? neg_inf : Real(mask.sinks[head]);
  Reference r{RealMatrix::Zero(n_q, n_k), RealMatrix::Zero(n_q, v.cols()),
              RealMatrix::Zero(n_q, v.cols()), RealMatrix(n_q, 1)};
  // w_ij = exp(s_ij - lse_i), lse_i = log(exp(sink) + sum_j exp(s_ij)); a row with neither a key
  // nor a sink has no weights and lse -inf.
  for (Index i = 0; i < n_q; ++i) {
    Real m = sink;
    for (Index j = 0; j < n_k; ++j) m = std::max(m, s(i, j));
    if (m == neg_inf) {
      r.lse(i, 0) = neg_inf;
      continue;
    }
    Real sum = std::exp(sink - m);
    for (Index j = 0; j < n_k; ++j) sum += std::exp(s(i, j) - m);
    r.lse(i, 0) = m + std::log(sum);
    for (Index j = 0; j < n_k; ++j) r.w(i, j) = std::exp(s(i, j) - m) / sum;
  }
  for (Index i = 0; i < n_q; ++i)
    for (Index c = 0; c < v.cols(); ++c)
      for (Index j = 0; j < n_k; ++j) {
        r.o(i, c) += r.w(i, j) * v(j, c);
        r.mag(i, c) += r.w(i, j) * std::abs(v(j, c));
      }
  return r;
}

// The multi-head layout, one head at a time through reference_attention: head h reads column
// block h of Q and block h / (heads / kv_heads) of K and V. Weights are stacked vertically
// ((heads·n_q) x n_k), outputs side by side (n_q x (heads·d_v)), lse is n_q x heads.
inline Reference reference_heads(const RealMatrix& q, const RealMatrix& k, const RealMatrix& v,
                                 Index heads, Index kv_heads, Real scale,
                                 const RefMask& mask = {}) {
  const Index d_k = q.cols() / heads, d_v = v.cols() / kv_heads, n_q = q.rows();
  Reference all{RealMatrix(heads * n_q, k.rows()), RealMatrix(n_q, heads * d_v),
                RealMatrix(n_q, heads * d_v), RealMatrix(n_q, heads)};
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / (heads / kv_heads);
    const Reference r = reference_attention(q.middleCols(h * d_k, d_k), k.middleCols(g * d_k, d_k),
                                            v.middleCols(g * d_v, d_v), scale, mask, h);
    all.w.middleRows(h * n_q, n_q) = r.w;
    all.o.middleCols(h * d_v, d_v) = r.o;
    all.mag.middleCols(h * d_v, d_v) = r.mag;
    all.lse.col(h) = r.lse;
  }
  return all;
}

// RoPE from its definition: pair c of each head of row i turns by positions[i] * base^(-2c/dim),
// pairs (c, c + dim/2) or, interleaved, (2c, 2c + 1); columns past dim stay.
inline RealMatrix reference_rope(const RealMatrix& x, Index heads,
                                 const std::vector<Index>& positions, Real base, bool interleaved,
                                 Index dim = 0) {
  const Index d_head = x.cols() / heads;
  if (dim == 0) dim = d_head;
  RealMatrix y = x;
  for (Index i = 0; i < x.rows(); ++i)
    for (Index h = 0; h < heads; ++h)
      for (Index c = 0; c < dim / 2; ++c) {
        const Real angle = Real(positions[i]) * std::pow(base, -Real(2 * c) / Real(dim));
        const Index a = h * d_head + (interleaved ? 2 * c : c);
        const Index b = interleaved ? a + 1 : a + dim / 2;
        y(i, a) = x(i, a) * std::cos(angle) - x(i, b) * std::sin(angle);
        y(i, b) = x(i, b) * std::cos(angle) + x(i, a) * std::sin(angle);
      }
  return y;
}

inline std::vector<Index> positions_from(Index first, Index n) {
  std::vector<Index> p(n);
  for (Index i = 0; i < n; ++i) p[i] = first + i;
  return p;
}

// X W + b in long double.
inline RealMatrix reference_project(const RealMatrix& x, const RealMatrix& w, const RealMatrix& b) {
  RealMatrix y(x.rows(), w.cols());
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) {
      Real sum = b(0, j);
      for (Index c = 0; c < x.cols(); ++c) sum += x(i, c) * w(c, j);
      y(i, j) = sum;
    }
  return y;
}

// max |got - ref| <= rel * max |ref|: for results that pass through several products, where an
// entrywise bound has no natural scale.
template <class Derived>
::testing::AssertionResult near_normwise(const Eigen::MatrixBase<Derived>& got,
                                         const RealMatrix& ref, double rel) {
  if (got.rows() != ref.rows() || got.cols() != ref.cols())
    return ::testing::AssertionFailure() << "shape " << got.rows() << "x" << got.cols()
                                         << " != " << ref.rows() << "x" << ref.cols();
  Real scale = 0, worst = 0;
  Index wi = 0, wj = 0;
  for (Index i = 0; i < ref.rows(); ++i)
    for (Index j = 0; j < ref.cols(); ++j) {
      scale = std::max(scale, std::abs(ref(i, j)));
      const Real d = std::abs(static_cast<Real>(got(i, j)) - ref(i, j));
      if (!(d <= worst)) {  // also catches NaN
        worst = d;
        wi = i;
        wj = j;
      }
    }
  if (!(worst <= static_cast<Real>(rel) * scale))
    return ::testing::AssertionFailure()
           << "max |diff| " << static_cast<double>(worst) << " at (" << wi << ", " << wj << ") > "
           << rel << " * max |ref| " << static_cast<double>(scale);
  return ::testing::AssertionSuccess();
}

// |got - ref| <= rel * max(|ref|, floor) entrywise.
template <class Derived>
::testing::AssertionResult near_rel(const Eigen::MatrixBase<Derived>& got, const RealMatrix& ref,
                                    double rel, Real floor) {
  if (got.rows() != ref.rows() || got.cols() != ref.cols())
    return ::testing::AssertionFailure() << "shape " << got.rows() << "x" << got.cols()
                                         << " != " << ref.rows() << "x" << ref.cols();
  for (Index i = 0; i < ref.rows(); ++i)
    for (Index j = 0; j < ref.cols(); ++j) {
      const Real g = static_cast<Real>(got(i, j)), e = ref(i, j);
      const Real bound = static_cast<Real>(rel) * std::max(std::abs(e), floor);
      if (!(std::abs(g - e) <= bound))
        return ::testing::AssertionFailure()
               << "entry (" << i << ", " << j << "): got " << static_cast<double>(g)
               << ", reference " << static_cast<double>(e) << ", |diff| "
               << static_cast<double>(std::abs(g - e)) << " > " << static_cast<double>(bound);
    }
  return ::testing::AssertionSuccess();
}

// Weights: relative, with small weights held to an absolute rel * 1e-6.
template <class T, class Derived>
::testing::AssertionResult weights_near(const Eigen::MatrixBase<Derived>& got, const Reference& r) {
  return near_rel(got, r.w, Tolerance<T>::rel, 1e-6L);
}

// Outputs: relative to the size of the terms summed (sum_j w_ij |v_jc|), the quantity the
// rounding error of a weighted sum scales with; a plain relative test would fail on cancellation.
template <class T, class Derived>
::testing::AssertionResult output_near(const Eigen::MatrixBase<Derived>& got, const Reference& r) {
  if (got.rows() != r.o.rows() || got.cols() != r.o.cols())
    return ::testing::AssertionFailure() << "output shape " << got.rows() << "x" << got.cols()
                                         << " != " << r.o.rows() << "x" << r.o.cols();
  for (Index i = 0; i < r.o.rows(); ++i)
    for (Index c = 0; c < r.o.cols(); ++c) {
      const Real g = static_cast<Real>(got(i, c)), e = r.o(i, c);
      const Real bound = static_cast<Real>(Tolerance<T>::rel) *
                         std::max(r.mag(i, c), static_cast<Real>(std::numeric_limits<T>::min()));
      if (!(std::abs(g - e) <= bound))
        return ::testing::AssertionFailure()
               << "output (" << i << ", " << c << "): got " << static_cast<double>(g)
               << ", reference " << static_cast<double>(e) << ", bound "
               << static_cast<double>(bound);
    }
  return ::testing::AssertionSuccess();
}

// lse: absolute error relative to 1 (it is a log), -inf exactly where nothing is attended.
template <class T, class Derived>
::testing::AssertionResult lse_near(const Eigen::MatrixBase<Derived>& got, const RealMatrix& ref) {
  if (got.rows() != ref.rows() || got.cols() != ref.cols())
    return ::testing::AssertionFailure() << "lse shape " << got.rows() << "x" << got.cols();
  for (Index i = 0; i < ref.rows(); ++i)
    for (Index h = 0; h < ref.cols(); ++h) {
      const Real e = ref(i, h), g = got(i, h);
      const bool ok = std::isinf(e)
                          ? g == e
                          : std::abs(g - e) <= Tolerance<T>::rel * std::max<Real>(1, std::abs(e));
      if (!ok)
        return ::testing::AssertionFailure()
               << "lse(" << i << ", " << h << ") = " << double(g) << ", reference " << double(e);
    }
  return ::testing::AssertionSuccess();
}

// Row-stochastic: every entry finite and >= 0, each row sums to 1 within the type's tolerance,
// except rows listed as fully masked, which must be exactly 0.
template <class Derived>
::testing::AssertionResult row_stochastic(const Eigen::MatrixBase<Derived>& w,
                                          const std::vector<Index>& zero_rows = {}) {
  using T = typename Derived::Scalar;
  for (Index i = 0; i < w.rows(); ++i) {
    const bool zero = std::find(zero_rows.begin(), zero_rows.end(), i) != zero_rows.end();
    Real sum = 0;
    for (Index j = 0; j < w.cols(); ++j) {
      const T x = w(i, j);
      if (!std::isfinite(x) || x < 0 || (zero && x != 0))
        return ::testing::AssertionFailure() << "w(" << i << ", " << j << ") = " << x;
      sum += x;
    }
    const Real want = zero ? 0 : 1;
    if (!(std::abs(sum - want) <= static_cast<Real>(Tolerance<T>::rel)))
      return ::testing::AssertionFailure() << "row " << i << " sums to " << static_cast<double>(sum)
                                           << ", not " << static_cast<double>(want);
  }
  return ::testing::AssertionSuccess();
}

// Runs `f` and checks that it throws std::invalid_argument whose message holds every one of
// `parts` (the function's name and the offending shapes).
template <class F>
::testing::AssertionResult throws_invalid(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    for (const char* p : parts)
      if (what.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << what << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw something other than std::invalid_argument";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace attn_test
