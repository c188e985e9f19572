#include "attn/projection.hpp"

#include <gtest/gtest.h>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class Projection : public ::testing::Test {};
TYPED_TEST_SUITE(Projection, Scalars);

TYPED_TEST(Projection, IsXTimesWPlusBias) {
  using T = TypeParam;
  const Mat<T> x = normal<T>(9, 12, 1), w = normal<T>(12, 5, 2), b = normal<T>(1, 5, 3);
  const Mat<T> y = attn::project(x, w, b);
  RealMatrix ref(9, 5);
  for (Index i = 0; i < 9; ++i)
    for (Index j = 0; j < 5; ++j) {
      Real s = static_cast<Real>(b(0, j)), mag = std::abs(s);
      for (Index c = 0; c < 12; ++c) {
        s += static_cast<Real>(x(i, c)) * w(c, j);
        mag += std::abs(static_cast<Real>(x(i, c)) * w(c, j));
      }
      ref(i, j) = s;
      // Rounding scales with the summed magnitudes, not the (possibly cancelling) result.
      EXPECT_LE(std::abs(static_cast<Real>(y(i, j)) - s), Tolerance<T>::rel * mag) << i << "," << j;
    }
}

TYPED_TEST(Projection, KeepsCompileTimeWidths) {
  using T = TypeParam;
  const Eigen::Matrix<T, Eigen::Dynamic, 4, Eigen::RowMajor> w = normal<T>(6, 4, 1);
  const Eigen::Matrix<T, 1, 4> b = Eigen::Matrix<T, 1, 4>::Zero();
  const auto y = attn::project(normal<T>(3, 6, 2), w, b);
  static_assert(decltype(y)::ColsAtCompileTime == 4, "project keeps W's fixed width");
  EXPECT_EQ(y.rows(), 3);
}

TYPED_TEST(Projection, BadShapesThrow) {
  using T = TypeParam;
  const Mat<T> x = normal<T>(3, 6, 1), w = normal<T>(5, 4, 2), w6 = normal<T>(6, 4, 3);
  const Mat<T> b = Mat<T>::Zero(1, 4), b3 = Mat<T>::Zero(1, 3), b2 = Mat<T>::Zero(2, 4);
  EXPECT_TRUE(throws_invalid([&] { attn::project(x, w, b); }, {"attn::project", "3x6", "5x4"}));
  EXPECT_TRUE(throws_invalid([&] { attn::project(x, w6, b3); }, {"attn::project", "1x3", "6x4"}));
  EXPECT_TRUE(throws_invalid([&] { attn::project(x, w6, b2); }, {"attn::project", "2x4"}));
}

}  // namespace
