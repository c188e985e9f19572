// Rotary position embedding against its definition in long double, known values, and the
// property it exists for: q_m · k_n depends on m - n alone.
#include <attn/rope.hpp>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class RopeTest : public ::testing::Test {};
TYPED_TEST_SUITE(RopeTest, Scalars);

TYPED_TEST(RopeTest, MatchesTheDefinitionForBothStylesAndPartialRotation) {
  using T = TypeParam;
  const Index heads = 3, d_head = 16, n = 9;
  const Mat<T> x = normal<T>(n, heads * d_head, 1);
  for (const auto style : {attn::RopeStyle::half_split, attn::RopeStyle::interleaved})
    for (const Index dim : {Index(0), Index(8), Index(2)})
      for (const Index first : {Index(0), Index(7), Index(100000)}) {
        Mat<T> y = x;
        attn::apply_rope(y, heads, first, {.base = 10000, .style = style, .rotary_dim = dim});
        const RealMatrix ref = reference_rope(to_real(x), heads, positions_from(first, n), 10000,
                                              style == attn::RopeStyle::interleaved, dim);
        // Angles up to 1e5 rad: float's own rounding of x dominates, double's stays near 1e-12.
        EXPECT_TRUE(near_normwise(y, ref, std::is_same_v<T, float> ? 2e-6 : 1e-13))
            << "interleaved " << (style == attn::RopeStyle::interleaved) << " dim " << dim
            << " first " << first;
      }
}

TYPED_TEST(RopeTest, KnownValues) {
  using T = TypeParam;
  // d_head = 2: one pair, theta = 1, so position p turns (1, 0) by p radians.
  Mat<T> x(3, 2);
  x << 1, 0, 1, 0, 0, 1;
  attn::apply_rope(x, 1, 0);
  EXPECT_EQ(x(0, 0), T(1));  // position 0 is the identity
  EXPECT_EQ(x(0, 1), T(0));
  EXPECT_NEAR(double(x(1, 0)), std::cos(1.0), 1e-7);
  EXPECT_NEAR(double(x(1, 1)), std::sin(1.0), 1e-7);
  EXPECT_NEAR(double(x(2, 0)), -std::sin(2.0), 1e-7);
  EXPECT_NEAR(double(x(2, 1)), std::cos(2.0), 1e-7);
  // d_head = 4, half-split: pairs (0, 2) with theta 1 and (1, 3) with theta base^-1/2 = 0.01.
  Mat<T> y = Mat<T>::Ones(1, 4);
  attn::apply_rope(y, 1, 3);
  EXPECT_NEAR(double(y(0, 0)), std::cos(3.0) - std::sin(3.0), 1e-6);
  EXPECT_NEAR(double(y(0, 2)), std::cos(3.0) + std::sin(3.0), 1e-6);
  EXPECT_NEAR(double(y(0, 1)), std::cos(0.03) - std::sin(0.03), 1e-6);
  EXPECT_NEAR(double(y(0, 3)), std::cos(0.03) + std::sin(0.03), 1e-6);
}

TYPED_TEST(RopeTest, DotProductsDependOnRelativePositionOnly) {
  using T = TypeParam;
  const Index d = 32;
  const Mat<T> q = normal<T>(1, d, 2), k = normal<T>(1, d, 3);
  const auto rotated_dot = [&](Index m, Index n) {
    Mat<T> qm = q, kn = k;
    attn::apply_rope(qm, 1, m);
    attn::apply_rope(kn, 1, n);
    return double(
        (qm.row(0).template cast<Real>() * kn.row(0).transpose().template cast<Real>())(0));
  };
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-11;
  for (const Index shift : {Index(1), Index(50), Index(3000)}) {
    EXPECT_NEAR(rotated_dot(5, 2), rotated_dot(5 + shift, 2 + shift), tol) << shift;
    EXPECT_NEAR(rotated_dot(0, 9), rotated_dot(shift, 9 + shift), tol) << shift;
  }
  // Rotations keep each head's norm.
  Mat<T> x = normal<T>(4, 2 * d, 4);
  const Mat<T> before = x;
  attn::apply_rope(x, 2, 123);
  const double norm_tol = std::is_same_v<T, float> ? 1e-4 : 1e-12;
  EXPECT_NEAR(double(x.norm()), double(before.norm()), norm_tol);
}

TYPED_TEST(RopeTest, PerRowPositionsAndBlocks) {
  using T = TypeParam;
  const Mat<T> x = normal<T>(6, 2 * 8, 5);
  const std::vector<Index> positions{0, 1, 2, 0, 1, 40};  // two packed sequences, say
  Mat<T> y = x;
  attn::apply_rope(y, 2, positions);
  EXPECT_TRUE(
      near_normwise(y, reference_rope(to_real(x), 2, positions, 10000, false), Tolerance<T>::rel));
  // A block of columns (one head at a time) is rotated in place like the whole.
  Mat<T> z = x;
  attn::apply_rope(z.leftCols(8), 1, positions);
  attn::apply_rope(z.rightCols(8), 1, positions);
  EXPECT_EQ(z, y);
}

TYPED_TEST(RopeTest, RejectsBadArguments) {
  using T = TypeParam;
  Mat<T> x(3, 12);
  EXPECT_TRUE(throws_invalid([&] { attn::apply_rope(x, 5, 0); }, {"attn::apply_rope", "12", "5"}));
  EXPECT_TRUE(throws_invalid([&] { attn::apply_rope(x, 2, 0, {.rotary_dim = 5}); },
                             {"attn::apply_rope", "rotary_dim is 5", "6"}));
  EXPECT_TRUE(
      throws_invalid([&] { attn::apply_rope(x, 2, 0, {.rotary_dim = 8}); }, {"rotary_dim is 8"}));
  EXPECT_TRUE(throws_invalid([&] { attn::apply_rope(x, 4, 0); }, {"rotary_dim", "3"}));  // odd
  EXPECT_TRUE(throws_invalid([&] { attn::apply_rope(x, 2, 0, {.base = -1}); }, {"base"}));
  EXPECT_TRUE(throws_invalid([&] { attn::apply_rope(x, 2, -1); }, {"first_position is -1"}));
  EXPECT_TRUE(throws_invalid(
      [&] {
        attn::apply_rope(x, 2, std::vector<Index>{0, 1});
      },
      {"3x12", "2 positions"}));
}

}  // namespace
