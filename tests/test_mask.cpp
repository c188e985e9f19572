#include "attn/mask.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "support.hpp"

namespace {

using namespace attn_test;

BoolMatrix bools(Index rows, Index cols, std::initializer_list<int> values) {
  BoolMatrix m(rows, cols);
  auto it = values.begin();
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = *it++ != 0;
  return m;
}

TEST(CausalMask, SquareIsLowerTriangular) {
  EXPECT_EQ(attn::causal_mask(3, 3), bools(3, 3, {1, 0, 0, 1, 1, 0, 1, 1, 1}));
}

TEST(CausalMask, FewerQueriesThanKeysAreTheLastPositions) {
  // Two new queries over four cached keys: they are positions 2 and 3.
  EXPECT_EQ(attn::causal_mask(2, 4), bools(2, 4, {1, 1, 1, 0, 1, 1, 1, 1}));
}

TEST(CausalMask, MoreQueriesThanKeysLeavesTheFirstRowsEmpty) {
  EXPECT_EQ(attn::causal_mask(4, 2), bools(4, 2, {0, 0, 0, 0, 1, 0, 1, 1}));
}

template <class T>
class ApplyMask : public ::testing::Test {};
TYPED_TEST_SUITE(ApplyMask, Scalars);

TYPED_TEST(ApplyMask, BooleanMaskReplacesMaskedScoresWithMinusInfinity) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  Mat<T> s = normal<T>(5, 7, 4);
  s(1, 1) = std::numeric_limits<T>::quiet_NaN();  // masked below: must not survive
  const Mat<T> before = s;
  BoolMatrix allow = random_bool(5, 7, 9);
  allow(1, 1) = false;
  attn::detail::apply_mask(s, allow);
  for (Index i = 0; i < 5; ++i)
    for (Index j = 0; j < 7; ++j) {
      if (allow(i, j))
        EXPECT_EQ(s(i, j), before(i, j));
      else
        EXPECT_EQ(s(i, j), -inf);
    }
}

TYPED_TEST(ApplyMask, AdditiveMaskIsAdded) {
  using T = TypeParam;
  Mat<T> s = normal<T>(4, 6, 5);
  const Mat<T> before = s;
  Mat<T> bias = normal<T>(4, 6, 6);
  bias(2, 3) = -std::numeric_limits<T>::infinity();
  attn::detail::apply_mask(s, bias);
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 6; ++j) EXPECT_EQ(s(i, j), before(i, j) + bias(i, j));
}

TYPED_TEST(ApplyMask, ArrayExpressionsAreMasksToo) {
  using T = TypeParam;
  Mat<T> s = normal<T>(3, 3, 7);
  const Mat<T> before = s;
  attn::detail::apply_mask(s, before.array() > T(0));  // attend only where the score is positive
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 3; ++j)
      EXPECT_EQ(s(i, j), before(i, j) > 0 ? before(i, j) : -std::numeric_limits<T>::infinity());
}

TYPED_TEST(ApplyMask, CausalMasksExactlyTheKeysAfterEachQuery) {
  using T = TypeParam;
  for (auto [n_q, n_k] : {std::pair<Index, Index>{5, 5}, {3, 8}, {8, 3}, {1, 6}, {6, 1}}) {
    Mat<T> s = normal<T>(n_q, n_k, 10);
    const Mat<T> before = s;
    attn::detail::apply_band(s, attn::detail::KeyBand(n_q, n_k, true, {}));
    for (Index i = 0; i < n_q; ++i)
      for (Index j = 0; j < n_k; ++j) {
        // Written from the definition: query i is position i + (n_k - n_q) of the key sequence.
        const Index position = i + (n_k - n_q);
        if (j <= position)
          EXPECT_EQ(s(i, j), before(i, j));
        else
          EXPECT_EQ(s(i, j), -std::numeric_limits<T>::infinity());
      }
  }
}

}  // namespace
