#include "attn/softmax.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "attn/detail/packet.hpp"
#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class Softmax : public ::testing::Test {};
TYPED_TEST_SUITE(Softmax, Scalars);

TYPED_TEST(Softmax, MatchesLongDoubleReference) {
  using T = TypeParam;
  // sigma = 30 spans exponents that underflow, in float and in double.
  for (double sigma : {0.1, 1.0, 30.0}) {
    Mat<T> s = normal<T>(9, 37, 11, sigma);
    const RealMatrix ref = reference_softmax(to_real(s));
    attn::softmax_rows(s);
    EXPECT_TRUE(near_rel(s, ref, Tolerance<T>::rel, 1e-6L)) << "sigma " << sigma;
  }
}

TYPED_TEST(Softmax, RowsAreStochastic) {
  using T = TypeParam;
  Mat<T> s = normal<T>(16, 300, 3, 4.0);
  s(2, 7) = s(5, 0) = -std::numeric_limits<T>::infinity();
  attn::softmax_rows(s);
  EXPECT_TRUE(row_stochastic(s));
  EXPECT_EQ(s(2, 7), T(0));
  EXPECT_EQ(s(5, 0), T(0));
}

TYPED_TEST(Softmax, AddingAConstantToARowChangesNothing) {
  using T = TypeParam;
  // Scores on a grid of 1/8 and integer shifts keep every sum exact, so the invariance is exact:
  // s - max(s) is the same bits before and after the shift.
  Mat<T> s = (normal<T>(6, 50, 5, 16.0) * T(8)).array().round() / T(8);
  Mat<T> shifted = s;
  const T shifts[] = {-4096, -1, 0, 3, 250, 70000};
  for (Index i = 0; i < s.rows(); ++i) shifted.row(i).array() += shifts[i];
  attn::softmax_rows(s);
  attn::softmax_rows(shifted);
  EXPECT_EQ(s, shifted);
}

TYPED_TEST(Softmax, MinusInfinityGetsExactlyZeroWeight) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  Mat<T> s(1, 5);
  s << T(0.5), -inf, T(-1), -inf, T(2);
  Mat<T> kept(1, 3);
  kept << T(0.5), T(-1), T(2);
  const RealMatrix ref = reference_softmax(to_real(kept));
  attn::softmax_rows(s);
  EXPECT_EQ(s(0, 1), T(0));
  EXPECT_EQ(s(0, 3), T(0));
  const Mat<T> rest = (Mat<T>(1, 3) << s(0, 0), s(0, 2), s(0, 4)).finished();
  EXPECT_TRUE(near_rel(rest, ref, Tolerance<T>::rel, 1e-6L));
}

TYPED_TEST(Softmax, FullyMaskedRowBecomesZeros) {
  using T = TypeParam;
  Mat<T> s = normal<T>(3, 8, 1);
  s.row(1).setConstant(-std::numeric_limits<T>::infinity());
  attn::softmax_rows(s);
  EXPECT_TRUE(row_stochastic(s, {1}));
}

TYPED_TEST(Softmax, HugeFiniteLogitsNeitherOverflowNorGiveNaN) {
  using T = TypeParam;
  const T big = std::numeric_limits<T>::max();
  Mat<T> s(3, 4);
  s << T(1e30), T(-1e30), T(0), T(1e30),  // two tied maxima share the row
      big, -big, big / 2, T(0),           // the largest finite numbers
      T(-1e30), T(-1e30), T(-1e30), T(-1e30);
  attn::softmax_rows(s);
  Mat<T> want(3, 4);
  want << 0.5, 0, 0, 0.5, 1, 0, 0, 0, 0.25, 0.25, 0.25, 0.25;
  EXPECT_EQ(s, want);
}

TYPED_TEST(Softmax, PlusInfinityEntriesShareTheRow) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  Mat<T> s(1, 4);
  s << inf, T(1e30), -inf, inf;
  attn::softmax_rows(s);
  Mat<T> want(1, 4);
  want << 0.5, 0, 0, 0.5;
  EXPECT_EQ(s, want);
}

TYPED_TEST(Softmax, NaNReachesOnlyItsOwnRow) {
  using T = TypeParam;
  Mat<T> s = normal<T>(4, 9, 2);
  Mat<T> clean = s;
  s(2, 5) = std::numeric_limits<T>::quiet_NaN();
  attn::softmax_rows(s);
  attn::softmax_rows(clean);
  for (Index j = 0; j < s.cols(); ++j) EXPECT_TRUE(std::isnan(s(2, j))) << j;
  for (Index i : {0, 1, 3}) EXPECT_EQ(s.row(i), clean.row(i)) << i;
}

TYPED_TEST(Softmax, WorksOnBlocksAndColumnMajorStorage) {
  using T = TypeParam;
  const Mat<T> s = normal<T>(6, 10, 8, 2.0);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> col = s;
  attn::softmax_rows(col);
  EXPECT_TRUE(near_rel(col, reference_softmax(to_real(s)), Tolerance<T>::rel, 1e-6L));

  Mat<T> whole = s;
  attn::softmax_rows(whole.block(1, 2, 3, 5));  // a temporary expression, normalised in place
  EXPECT_TRUE(near_rel(whole.block(1, 2, 3, 5), reference_softmax(to_real(s.block(1, 2, 3, 5))),
                       Tolerance<T>::rel, 1e-6L));
  EXPECT_EQ(whole.row(0), s.row(0));  // outside the block: untouched
  EXPECT_EQ(whole.block(1, 0, 3, 2), s.block(1, 0, 3, 2));
}

TYPED_TEST(Softmax, EmptyMatricesAreLeftAlone) {
  using T = TypeParam;
  Mat<T> no_cols(3, 0), no_rows(0, 4);
  attn::softmax_rows(no_cols);
  attn::softmax_rows(no_rows);
  EXPECT_EQ(no_cols.rows(), 3);
  EXPECT_EQ(no_rows.cols(), 4);
}

}  // namespace

// The vectorised exp behind every weight (detail::FlushedExp, a fast polynomial for float and for
// AVX2's and AVX-512's double packets) against long double over the whole range the softmax feeds
// it, x in [log(min normal), 0]: within 4 ulp, exactly 0 below the range and at -inf, NaN kept.
namespace {
template <class T>
class FlushedExpTest : public ::testing::Test {};
TYPED_TEST_SUITE(FlushedExpTest, attn_test::Scalars);

TYPED_TEST(FlushedExpTest, PacketsAreAccurateAndFlushBelowTheNormalRange) {
  using T = TypeParam;
  namespace ei = Eigen::internal;
  using P = attn::detail::Packet<T>;
  constexpr int W = attn::detail::packet_size<T>;
  const attn::detail::FlushedExp<T> fexp;
  const auto packet_exp = [&](T x) {
    T in[W], out[W];
    for (int i = 0; i < W; ++i) in[i] = x;
    ei::pstoreu(out, fexp.packetOp(ei::ploadu<P>(in)));
    return out[W - 1];
  };
  const T ulp = std::numeric_limits<T>::epsilon();
  long double worst = 0;
  for (int step = 0; step <= 200000; ++step) {
    const T x = fexp.cutoff * T(step) / T(200000);
    const long double want = std::exp(static_cast<long double>(x));
    worst = std::max(worst, std::abs(packet_exp(x) - want) / want);
  }
  EXPECT_LE(worst, 4 * ulp);
  EXPECT_EQ(packet_exp(T(0)), T(1));
  EXPECT_EQ(packet_exp(fexp.cutoff * T(1.0001)), T(0));
  EXPECT_EQ(packet_exp(-std::numeric_limits<T>::infinity()), T(0));
  EXPECT_TRUE(std::isnan(packet_exp(std::numeric_limits<T>::quiet_NaN())));
}
}  // namespace
