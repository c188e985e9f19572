#include "attn/init.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "support.hpp"

namespace {

using namespace attn_test;

TEST(Rng, FollowsTheStandardMersenneTwisterSequence) {
  // [rand.predef]: the 10000th output of a default-constructed mt19937_64 (seed 5489) is
  // 9981545732273789042; our uniform() is its top 53 bits over 2^53.
  attn::Rng rng(5489);
  double u = 0;
  for (int i = 0; i < 10000; ++i) u = rng.uniform();
  EXPECT_EQ(u, static_cast<double>(9981545732273789042ull >> 11) * 0x1.0p-53);
}

TEST(Rng, IsUniformOnTheUnitInterval) {
  attn::Rng rng(42);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sum_sq += u * u;
  }
  // Mean 1/2 and variance 1/12; the standard errors are 6.5e-4 and 1.9e-4, so these are ~8 sigma.
  EXPECT_NEAR(sum / n, 0.5, 5e-3);
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0 / 12, 1.5e-3);
}

template <class T>
class GlorotUniform : public ::testing::Test {};
TYPED_TEST_SUITE(GlorotUniform, Scalars);

TYPED_TEST(GlorotUniform, HasTheXavierBoundAndVariance) {
  using T = TypeParam;
  Mat<T> w(384, 128);
  attn::Rng rng(7);
  attn::glorot_uniform(w, rng);
  const double a = std::sqrt(6.0 / (384 + 128));
  EXPECT_LE(w.cwiseAbs().maxCoeff(), static_cast<T>(a));
  EXPECT_GT(w.cwiseAbs().maxCoeff(), static_cast<T>(0.99 * a));  // the whole range is used
  const double mean = static_cast<double>(w.mean());
  const double var = static_cast<double>((w.array() - w.mean()).square().mean());
  // Var U(-a, a) = a^2 / 3 = 2 / (fan_in + fan_out): the Glorot condition.
  EXPECT_NEAR(mean, 0.0, 0.01 * a);
  EXPECT_NEAR(var, 2.0 / (384 + 128), 0.03 * 2.0 / (384 + 128));
}

TYPED_TEST(GlorotUniform, IsReproducibleAndSeedDependent) {
  using T = TypeParam;
  Mat<T> a(10, 6), b(10, 6), c(10, 6);
  attn::Rng ra(3), rb(3), rc(4);
  attn::glorot_uniform(a, ra);
  attn::glorot_uniform(b, rb);
  attn::glorot_uniform(c, rc);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TYPED_TEST(GlorotUniform, DrawsInRowMajorOrderWhateverTheStorage) {
  using T = TypeParam;
  Mat<T> row_major(5, 7);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> col_major(5, 7);
  attn::Rng r1(11), r2(11);
  attn::glorot_uniform(row_major, r1);
  attn::glorot_uniform(col_major, r2);
  EXPECT_EQ(Mat<T>(col_major), row_major);
}

}  // namespace
