// The contract of scaled dot-product attention. This file is compiled twice: against the composed
// reference path (test_scaled_dot_product) and, with ATTN_TEST_FUSED, against the fused kernel
// that is the public entry point (test_scaled_dot_product_fused), so both honour every rule.
#ifdef ATTN_TEST_FUSED
#include "attn/attention.hpp"
namespace path = attn;
#else
#include "attn/scaled_dot_product.hpp"
namespace path = attn::reference;
#endif

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class ScaledDotProduct : public ::testing::Test {};
TYPED_TEST_SUITE(ScaledDotProduct, Scalars);

struct Shape {
  Index n_q, n_k, d_k, d_v;
};
const Shape kShapes[] = {{1, 1, 1, 1},  {5, 5, 8, 8},     {7, 13, 16, 3},
                         {13, 7, 5, 9}, {33, 17, 64, 64}, {64, 100, 128, 32}};

template <class T>
struct Inputs {
  Mat<T> q, k, v;
  explicit Inputs(const Shape& s, std::uint64_t seed = 1, double sigma = 1.0)
      : q(normal<T>(s.n_q, s.d_k, seed, sigma)),
        k(normal<T>(s.n_k, s.d_k, seed + 1, sigma)),
        v(normal<T>(s.n_k, s.d_v, seed + 2)) {}
  Real scale() const { return 1 / std::sqrt(static_cast<Real>(q.cols())); }
  Reference reference(const RefMask& mask = {}) const {
    return reference_attention(to_real(q), to_real(k), to_real(v), scale(), mask);
  }
};

TYPED_TEST(ScaledDotProduct, MatchesLongDoubleReference) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    const Inputs<T> in(s);
    const Reference ref = in.reference();
    EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(in.q, in.k, in.v), ref))
        << s.n_q << "x" << s.n_k << " d_k " << s.d_k << " d_v " << s.d_v;
    EXPECT_TRUE(weights_near<T>(path::attention_weights(in.q, in.k), ref));
  }
}

TYPED_TEST(ScaledDotProduct, CausalMatchesReferenceForEveryAlignment) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    const Inputs<T> in(s, 7);
    const Reference ref = in.reference({.causal = true});
    const attn::Options causal{.causal = true};
    EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(in.q, in.k, in.v, causal), ref))
        << s.n_q << "x" << s.n_k;
    EXPECT_TRUE(weights_near<T>(path::attention_weights(in.q, in.k, causal), ref));
  }
}

TYPED_TEST(ScaledDotProduct, BooleanMaskMatchesReference) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    const Inputs<T> in(s, 20);
    const BoolMatrix allow = random_bool(s.n_q, s.n_k, 21);
    EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(in.q, in.k, in.v, allow),
                               in.reference({.allow = &allow})));
    const Reference both = in.reference({.allow = &allow, .causal = true});
    EXPECT_TRUE(output_near<T>(
        path::scaled_dot_product_attention(in.q, in.k, in.v, allow, {.causal = true}), both));
    EXPECT_TRUE(
        weights_near<T>(path::attention_weights(in.q, in.k, allow, {.causal = true}), both));
  }
}

TYPED_TEST(ScaledDotProduct, AdditiveMaskMatchesReference) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    const Inputs<T> in(s, 30);
    Mat<T> bias = normal<T>(s.n_q, s.n_k, 31);
    if (s.n_k > 1) bias(0, s.n_k - 1) = -std::numeric_limits<T>::infinity();
    const RealMatrix real_bias = to_real(bias);
    const Reference ref = in.reference({.bias = &real_bias});
    EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(in.q, in.k, in.v, bias), ref));
    EXPECT_TRUE(weights_near<T>(path::attention_weights(in.q, in.k, bias), ref));
  }
}

TYPED_TEST(ScaledDotProduct, FullyMaskedRowsGiveZeroWeightsAndZeroOutput) {
  using T = TypeParam;
  const Inputs<T> in({6, 9, 8, 5}, 40);
  BoolMatrix allow = random_bool(6, 9, 41);
  allow.row(2).setConstant(false);
  Mat<T> bias = Mat<T>::Zero(6, 9);
  bias.row(4).setConstant(-std::numeric_limits<T>::infinity());
  for (const Mat<T>& o : {path::scaled_dot_product_attention(in.q, in.k, in.v, allow),
                          path::scaled_dot_product_attention(in.q, in.k, in.v, bias)}) {
    EXPECT_TRUE(o.allFinite());
  }
  EXPECT_TRUE(path::scaled_dot_product_attention(in.q, in.k, in.v, allow).row(2).isZero(0));
  EXPECT_TRUE(path::scaled_dot_product_attention(in.q, in.k, in.v, bias).row(4).isZero(0));
  EXPECT_TRUE(row_stochastic(path::attention_weights(in.q, in.k, allow), {2}));
  EXPECT_TRUE(row_stochastic(path::attention_weights(in.q, in.k, bias), {4}));

  // Causal with more queries than keys: the first n_q - n_k queries see nothing.
  const Inputs<T> tall({9, 4, 8, 3}, 42);
  const Mat<T> o = path::scaled_dot_product_attention(tall.q, tall.k, tall.v, {.causal = true});
  EXPECT_TRUE(o.topRows(5).isZero(0));
  EXPECT_TRUE(o.allFinite());
  EXPECT_TRUE(
      row_stochastic(path::attention_weights(tall.q, tall.k, {.causal = true}), {0, 1, 2, 3, 4}));
}

TYPED_TEST(ScaledDotProduct, WeightsAreRowStochastic) {
  using T = TypeParam;
  const Inputs<T> self({40, 40, 16, 16}, 50), cross({12, 70, 32, 8}, 51);
  const Inputs<T> large({20, 20, 16, 16}, 52, /*sigma=*/1e4);  // scores ~ 1e8
  const BoolMatrix allow = random_bool(40, 40, 53);
  EXPECT_TRUE(row_stochastic(path::attention_weights(self.q, self.k)));
  EXPECT_TRUE(row_stochastic(path::attention_weights(self.q, self.k, {.causal = true})));
  EXPECT_TRUE(row_stochastic(path::attention_weights(cross.q, cross.k)));
  EXPECT_TRUE(row_stochastic(path::attention_weights(cross.q, cross.k, {.causal = true})));
  EXPECT_TRUE(row_stochastic(path::attention_weights(large.q, large.k)));
  std::vector<Index> empty_rows;
  for (Index i = 0; i < 40; ++i)
    if (!allow.row(i).any()) empty_rows.push_back(i);
  EXPECT_TRUE(row_stochastic(path::attention_weights(self.q, self.k, allow), empty_rows));
}

TYPED_TEST(ScaledDotProduct, LogitsNear1e30GiveExactAnswers) {
  using T = TypeParam;
  // Q = 2^100 * (entries in {-1, 0, 1}), K in {-1, 0, 1}: every score is 2^100 times a small
  // integer over sqrt(d), exact or equally rounded, so ties are exact ties and every gap is
  // ~1e30: the weights are exactly 1/(number of maxima) and 0.
  const Index n = 24, d = 8;
  Mat<T> q = normal<T>(n, d, 60).array().round().max(T(-1)).min(T(1)) * std::ldexp(T(1), 100);
  Mat<T> k = normal<T>(n, d, 61).array().round().max(T(-1)).min(T(1));
  const Mat<T> v = normal<T>(n, 4, 62);
  const Reference ref =
      reference_attention(to_real(q), to_real(k), to_real(v), 1 / std::sqrt(static_cast<Real>(d)));
  const Mat<T> w = path::attention_weights(q, k);
  const Mat<T> o = path::scaled_dot_product_attention(q, k, v);
  ASSERT_TRUE(w.allFinite());
  ASSERT_TRUE(o.allFinite());
  EXPECT_TRUE(weights_near<T>(w, ref));
  EXPECT_TRUE(output_near<T>(o, ref));
  EXPECT_TRUE(row_stochastic(w));
}

TYPED_TEST(ScaledDotProduct, DefaultScaleIsOneOverSqrtDk) {
  using T = TypeParam;
  const Inputs<T> in({10, 12, 24, 6}, 70);
  const Mat<T> by_default = path::scaled_dot_product_attention(in.q, in.k, in.v);
  const Mat<T> explicit_scale =
      path::scaled_dot_product_attention(in.q, in.k, in.v, {.scale = 1 / std::sqrt(24.0)});
  EXPECT_EQ(by_default, explicit_scale);
  // And a different scale gives what the reference gives for it.
  const Mat<T> doubled = path::scaled_dot_product_attention(in.q, in.k, in.v, {.scale = 0.5});
  EXPECT_TRUE(output_near<T>(
      doubled, reference_attention(to_real(in.q), to_real(in.k), to_real(in.v), 0.5L)));
}

TYPED_TEST(ScaledDotProduct, ZeroScaleAveragesTheValues) {
  using T = TypeParam;
  const Inputs<T> in({3, 8, 4, 5}, 80);
  const Mat<T> w = path::attention_weights(in.q, in.k, {.scale = 0.0});
  EXPECT_TRUE(w.isApproxToConstant(T(1) / 8, std::numeric_limits<T>::epsilon()));
  const Mat<T> o = path::scaled_dot_product_attention(in.q, in.k, in.v, {.scale = 0.0});
  const Mat<T> mean = in.v.colwise().mean();
  for (Index i = 0; i < 3; ++i)
    EXPECT_TRUE(o.row(i).isApprox(mean, T(8) * std::numeric_limits<T>::epsilon()));
}

TYPED_TEST(ScaledDotProduct, CausalRowIgnoresLaterKeysAndValues) {
  using T = TypeParam;
  const Index n = 16;
  const Inputs<T> in({n, n, 8, 8}, 90);
  const Mat<T> o = path::scaled_dot_product_attention(in.q, in.k, in.v, {.causal = true});
  for (Index i : {0, 5, 14}) {
    Mat<T> k = in.k, v = in.v;
    k.bottomRows(n - 1 - i) = normal<T>(n - 1 - i, 8, 100 + i, 10.0);
    v.bottomRows(n - 1 - i) = normal<T>(n - 1 - i, 8, 200 + i, 10.0);
    const Mat<T> changed = path::scaled_dot_product_attention(in.q, k, v, {.causal = true});
    EXPECT_EQ(changed.row(i), o.row(i)) << "row " << i;
    EXPECT_EQ(changed.topRows(i + 1), o.topRows(i + 1));
  }
}

TYPED_TEST(ScaledDotProduct, AcceptsAnyDenseExpression) {
  using T = TypeParam;
  const Inputs<T> in({9, 11, 8, 4}, 110);
  const Reference ref = in.reference();
  // Column-major copies.
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> qc = in.q, kc = in.k, vc = in.v;
  EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(qc, kc, vc), ref));
  // Maps over raw storage, and blocks of a bigger matrix.
  const Eigen::Map<const Mat<T>> qm(in.q.data(), 9, 8);
  Mat<T> big = Mat<T>::Zero(20, 20);
  big.block(3, 2, 11, 8) = in.k;
  EXPECT_TRUE(
      output_near<T>(path::scaled_dot_product_attention(qm, big.block(3, 2, 11, 8), in.v), ref));
  // Fixed-size widths, as a layer with compile-time d_k produces.
  const Eigen::Matrix<T, Eigen::Dynamic, 8, Eigen::RowMajor> qf = in.q, kf = in.k;
  const Eigen::Matrix<T, Eigen::Dynamic, 4, Eigen::RowMajor> vf = in.v;
  EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(qf, kf, vf), ref));
  // Transposed storage: K given as the transpose of a d_k x n_k matrix.
  const Mat<T> kt = in.k.transpose();
  EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(in.q, kt.transpose(), in.v), ref));
  // Entirely fixed-size inputs.
  const Eigen::Matrix<T, 9, 8> q9 = in.q;
  const Eigen::Matrix<T, 11, 8> k11 = in.k;
  const Eigen::Matrix<T, 11, 4> v11 = in.v;
  EXPECT_TRUE(output_near<T>(path::scaled_dot_product_attention(q9, k11, v11), ref));
}

TYPED_TEST(ScaledDotProduct, NaNReachesOnlyTheRowsThatUseIt) {
  using T = TypeParam;
  const Inputs<T> in({6, 6, 4, 3}, 120);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const Mat<T> clean = path::scaled_dot_product_attention(in.q, in.k, in.v);

  Mat<T> q = in.q;
  q(3, 1) = nan;  // a query: its own row only
  const Mat<T> o = path::scaled_dot_product_attention(q, in.k, in.v);
  EXPECT_TRUE(o.row(3).array().isNaN().all());
  for (Index i : {0, 1, 2, 4, 5}) EXPECT_EQ(o.row(i), clean.row(i));

  Mat<T> k = in.k;
  k(4, 0) = nan;  // a key: every row that attends it; a boolean mask shields row 0
  BoolMatrix allow = BoolMatrix::Constant(6, 6, true);
  allow(0, 4) = false;
  const Mat<T> masked = path::scaled_dot_product_attention(in.q, k, in.v, allow);
  const Mat<T> masked_clean = path::scaled_dot_product_attention(in.q, in.k, in.v, allow);
  EXPECT_EQ(masked.row(0), masked_clean.row(0));
  for (Index i = 1; i < 6; ++i) EXPECT_TRUE(masked.row(i).array().isNaN().all());
}

TYPED_TEST(ScaledDotProduct, EmptySequences) {
  using T = TypeParam;
  const Mat<T> q = normal<T>(3, 4, 1), k = normal<T>(5, 4, 2), v = normal<T>(5, 2, 3);
  const Mat<T> no_queries = path::scaled_dot_product_attention(q.topRows(0), k, v);
  EXPECT_EQ(no_queries.rows(), 0);
  EXPECT_EQ(no_queries.cols(), 2);
  // No keys: every query is fully masked, so its output row is 0.
  const Mat<T> no_keys = path::scaled_dot_product_attention(q, k.topRows(0), v.topRows(0));
  EXPECT_EQ(no_keys, Mat<T>::Zero(3, 2));
}

TYPED_TEST(ScaledDotProduct, BadShapesThrowNamingFunctionAndShapes) {
  using T = TypeParam;
  const Mat<T> q = normal<T>(4, 8, 1), k = normal<T>(5, 8, 2), v = normal<T>(5, 3, 3);
  const Mat<T> k7 = normal<T>(5, 7, 4), v6 = normal<T>(6, 3, 5);
  const char* sdpa = "attn::scaled_dot_product_attention";
  const char* weights = "attn::attention_weights";

  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q, k7, v); },
                             {sdpa, "4x8", "5x7", "d_k"}));
  EXPECT_TRUE(throws_invalid([&] { path::attention_weights(q, k7); }, {weights, "4x8", "5x7"}));
  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q, k, v6); },
                             {sdpa, "5x8", "6x3", "n_k"}));

  const BoolMatrix wrong_bool = BoolMatrix::Constant(5, 4, true);
  const Mat<T> wrong_bias = Mat<T>::Zero(4, 6);
  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q, k, v, wrong_bool); },
                             {sdpa, "5x4", "4x5"}));
  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q, k, v, wrong_bias); },
                             {sdpa, "4x6", "4x5"}));
  EXPECT_TRUE(
      throws_invalid([&] { path::attention_weights(q, k, wrong_bool); }, {weights, "5x4", "4x5"}));

  const Mat<T> q0(4, 0), k0(5, 0);
  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q0, k0, v); },
                             {sdpa, "4x0", "5x0", "d_k"}));
  EXPECT_TRUE(throws_invalid([&] { path::attention_weights(q0, k0); }, {weights, "d_k"}));

  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(throws_invalid([&] { path::scaled_dot_product_attention(q, k, v, {.scale = nan}); },
                             {sdpa, "scale"}));
  EXPECT_TRUE(throws_invalid([&] { path::attention_weights(q, k, {.scale = HUGE_VAL}); },
                             {weights, "scale"}));
}

}  // namespace
