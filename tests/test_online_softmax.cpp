#include "attn/online_softmax.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class OnlineSoftmaxTest : public ::testing::Test {};
TYPED_TEST_SUITE(OnlineSoftmaxTest, Scalars);

// softmax(S) V and its magnitudes, in long double, from the whole rows at once.
Reference expected(const RealMatrix& s, const RealMatrix& v) {
  Reference r{reference_softmax(s), {}, {}, {}};
  r.o = r.w * v;
  r.mag = r.w * v.cwiseAbs();
  return r;
}

// Streams keys [begin, end) through `state` in tiles of `tile` columns, accumulating into acc.
template <class T>
void stream(attn::OnlineSoftmax<T>& state, Mat<T>& acc, const Mat<T>& s, const Mat<T>& v,
            Index begin, Index end, Index tile) {
  typename attn::OnlineSoftmax<T>::Column alpha;
  for (Index j = begin; j < end; j += tile) {
    const Index w = std::min(tile, end - j);
    Mat<T> p = s.middleCols(j, w);
    state.absorb(p, alpha);
    attn::OnlineSoftmax<T>::rescale(acc, alpha);
    acc.noalias() += p * v.middleRows(j, w);
  }
}

template <class T>
Mat<T> one_pass(const Mat<T>& s, const Mat<T>& v, Index tile, Mat<T>* lse = nullptr) {
  attn::OnlineSoftmax<T> state(s.rows());
  Mat<T> acc = Mat<T>::Zero(s.rows(), v.cols());
  stream(state, acc, s, v, 0, s.cols(), tile);
  state.finalize(acc);
  if (lse) *lse = state.log_sum_exp().matrix();
  return acc;
}

TYPED_TEST(OnlineSoftmaxTest, TilesReproduceSoftmaxTimesValues) {
  using T = TypeParam;
  const Mat<T> s = normal<T>(7, 53, 1, 3.0), v = normal<T>(53, 5, 2);
  const Reference ref = expected(to_real(s), to_real(v));
  for (Index tile : {1, 8, 16, 53, 64})
    EXPECT_TRUE(output_near<T>(one_pass(s, v, tile), ref)) << tile;
}

// The key-major phase (the fused kernel's layout, s_ij at tile[j * ld + i]) agrees with absorb on
// the same scores, including the edge rows: all -inf, a +inf, a NaN, and rows left inactive.
TYPED_TEST(OnlineSoftmaxTest, KeyMajorAbsorbAgreesWithRowAbsorb) {
  using T = TypeParam;
  constexpr T inf = std::numeric_limits<T>::infinity();
  const Index rows = 21, keys = 19, active = 18;
  Mat<T> tile1 = normal<T>(rows, keys, 71, 5.0), tile2 = normal<T>(rows, keys, 72, 5.0);
  tile1.row(2).setConstant(-inf);  // nothing yet, then something
  tile2.row(3).setConstant(-inf);  // something, then nothing
  tile1.row(4).setConstant(-inf), tile2.row(4).setConstant(-inf);
  tile2(5, 7) = inf;
  tile1(6, 0) = std::numeric_limits<T>::quiet_NaN();
  attn::OnlineSoftmax<T> by_rows(active), by_keys(rows);
  typename attn::OnlineSoftmax<T>::Column alpha_rows;
  std::vector<T> alpha_keys(rows);
  for (const Mat<T>* tile : {&tile1, &tile2}) {
    Mat<T> p = tile->topRows(active);
    Mat<T> key_major = tile->transpose();  // row-major keys x rows: s_ij at [j * rows + i]
    by_keys.absorb_key_major(key_major.data(), keys, rows, alpha_keys.data(), active);
    by_rows.absorb(p, alpha_rows);
    for (Index i = 0; i < active; ++i) {
      // Row 6's NaN poisons its sum (checked below), and so its output, in both forms; the
      // row form also turns every weight of the row into NaN at once.
      if (i == 6) continue;
      for (Index j = 0; j < keys; ++j) {
        const T a = p(i, j), b = key_major(j, i);
        EXPECT_TRUE((std::isnan(a) && std::isnan(b)) ||
                    std::abs(a - b) <= Tolerance<T>::rel * std::max<T>(std::abs(a), T(1e-6)))
            << i << ", " << j << ": " << a << " vs " << b;
      }
    }
  }
  for (Index i = 0; i < active; ++i) {
    const T ma = by_rows.running_max()(i), mb = by_keys.running_max()(i);
    const T la = by_rows.running_sum()(i), lb = by_keys.running_sum()(i);
    if (i == 6) {  // the NaN row
      EXPECT_TRUE(std::isnan(lb)) << lb;
      continue;
    }
    EXPECT_EQ(ma, mb) << i;
    EXPECT_NEAR(la, lb, Tolerance<T>::rel * std::max<T>(la, 1)) << i;
  }
  // The inactive row saw nothing.
  EXPECT_EQ(by_keys.running_max()(rows - 1), -inf);
  EXPECT_EQ(by_keys.running_sum()(rows - 1), T(0));
}

TYPED_TEST(OnlineSoftmaxTest, LogSumExpMatchesItsDefinition) {
  using T = TypeParam;
  const Mat<T> s = normal<T>(6, 40, 3, 20.0), v = normal<T>(40, 2, 4);
  Mat<T> lse;
  one_pass(s, v, 16, &lse);
  for (Index i = 0; i < s.rows(); ++i) {
    Real sum = 0;
    for (Index j = 0; j < s.cols(); ++j) sum += std::exp(static_cast<Real>(s(i, j)));
    const Real want = std::log(sum);
    EXPECT_LE(std::abs(static_cast<Real>(lse(i, 0)) - want),
              Tolerance<T>::rel * std::max<Real>(1, std::abs(want)))
        << i;
  }
}

TYPED_TEST(OnlineSoftmaxTest, MergingKeyRangesEqualsOnePassInAnyGrouping) {
  using T = TypeParam;
  const Mat<T> s = normal<T>(5, 60, 5, 4.0), v = normal<T>(60, 3, 6);
  const Reference ref = expected(to_real(s), to_real(v));
  const Index cuts[] = {0, 13, 41, 60};
  std::vector<attn::OnlineSoftmax<T>> states;
  std::vector<Mat<T>> accs;
  for (int r = 0; r < 3; ++r) {
    states.emplace_back(s.rows());
    accs.push_back(Mat<T>::Zero(s.rows(), v.cols()));
    stream(states[r], accs[r], s, v, cuts[r], cuts[r + 1], 8);
  }
  // (a + b) + c
  auto left = states[0];
  Mat<T> left_acc = accs[0];
  left.merge(states[1], left_acc, accs[1]);
  left.merge(states[2], left_acc, accs[2]);
  // a + (b + c), and c + b + a
  auto bc = states[1];
  Mat<T> bc_acc = accs[1];
  bc.merge(states[2], bc_acc, accs[2]);
  auto right = states[0];
  Mat<T> right_acc = accs[0];
  right.merge(bc, right_acc, bc_acc);
  auto reversed = states[2];
  Mat<T> reversed_acc = accs[2];
  reversed.merge(states[1], reversed_acc, accs[1]);
  reversed.merge(states[0], reversed_acc, accs[0]);

  for (auto* pair : {&left, &right, &reversed}) {
    Mat<T>& acc = pair == &left ? left_acc : pair == &right ? right_acc : reversed_acc;
    pair->finalize(acc);
    EXPECT_TRUE(output_near<T>(acc, ref));
  }
}

TYPED_TEST(OnlineSoftmaxTest, MaskedRowsAndMaskedTiles) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  Mat<T> s = normal<T>(4, 24, 7), v = normal<T>(24, 3, 8);
  s.row(1).setConstant(-inf);               // fully masked
  s.row(2).leftCols(16).setConstant(-inf);  // its first two tiles masked, then real keys
  Mat<T> lse;
  const Mat<T> o = one_pass(s, v, 8, &lse);
  EXPECT_TRUE(o.allFinite());
  EXPECT_TRUE(o.row(1).isZero(0));
  EXPECT_EQ(lse(1, 0), -inf);
  EXPECT_TRUE(output_near<T>(o, expected(to_real(s), to_real(v))));

  // Merging with a state that attended nothing changes nothing.
  attn::OnlineSoftmax<T> state(4), empty(4);
  Mat<T> acc = Mat<T>::Zero(4, 3), empty_acc = Mat<T>::Zero(4, 3);
  stream(state, acc, s, v, 0, 24, 8);
  const Mat<T> before = acc;
  state.merge(empty, acc, empty_acc);
  EXPECT_EQ(acc, before);
  empty.merge(state, empty_acc, acc);  // and the other way round
  EXPECT_EQ(empty_acc, acc);
}

TYPED_TEST(OnlineSoftmaxTest, GrowingHugeMaximaStayExact) {
  using T = TypeParam;
  // Each tile raises the maximum by ~1e30: every earlier term must be scaled to exactly 0.
  Mat<T> s(1, 6);
  s << T(-1e30), T(0), T(1e30), T(1e30), T(2e30), T(2e30);
  const Mat<T> v = (Mat<T>(6, 1) << 1, 2, 3, 4, 5, 7).finished();
  Mat<T> lse;
  const Mat<T> o = one_pass(s, v, 2, &lse);
  EXPECT_EQ(o(0, 0), T(6));  // the two tied maxima, values 5 and 7
  EXPECT_NEAR(static_cast<double>(lse(0, 0)), 2e30 + std::log(2.0), 2e30 * Tolerance<T>::rel);
}

TYPED_TEST(OnlineSoftmaxTest, NaNReachesOnlyItsRow) {
  using T = TypeParam;
  Mat<T> s = normal<T>(3, 16, 9);
  const Mat<T> v = normal<T>(16, 2, 10);
  const Mat<T> clean = one_pass(s, v, 4);
  s(1, 9) = std::numeric_limits<T>::quiet_NaN();
  const Mat<T> o = one_pass(s, v, 4);
  EXPECT_TRUE(o.row(1).array().isNaN().all());
  EXPECT_EQ(o.row(0), clean.row(0));
  EXPECT_EQ(o.row(2), clean.row(2));
}

TYPED_TEST(OnlineSoftmaxTest, FixedRowCount) {
  using T = TypeParam;
  attn::OnlineSoftmax<T, 4> state;
  static_assert(decltype(state)::RowsAtCompileTime == 4);
  EXPECT_EQ(state.rows(), 4);
  EXPECT_TRUE((state.running_max() == -std::numeric_limits<T>::infinity()).all());
  EXPECT_TRUE(state.running_sum().isZero(0));
}

// A sink is one more score in the denominator with no value: streaming the keys and then each
// row's own sink equals the softmax of the row with the sink as an extra column whose value is 0.
// Absorbed before any key, after them, or (-inf) not at all, it gives the same.
TYPED_TEST(OnlineSoftmaxTest, SinksJoinEachRowsDenominator) {
  using T = TypeParam;
  const Index rows = 5, keys = 23, d = 3;
  const Mat<T> s = normal<T>(rows, keys, 41, 3.0), v = normal<T>(keys, d, 42);
  typename attn::OnlineSoftmax<T>::Column sinks(rows);
  sinks << T(0.5), T(-4), T(9), -std::numeric_limits<T>::infinity(), T(2);
  // The reference: the sink as column `keys` of the scores, with a zero row of values.
  RealMatrix s_ext(rows, keys + 1), v_ext = RealMatrix::Zero(keys + 1, d);
  s_ext.leftCols(keys) = to_real(s);
  v_ext.topRows(keys) = to_real(v);
  for (Index i = 0; i < rows; ++i) s_ext(i, keys) = Real(sinks(i));
  const Reference ref = expected(s_ext, v_ext);

  typename attn::OnlineSoftmax<T>::Column alpha;
  for (const bool sink_first : {false, true}) {
    attn::OnlineSoftmax<T> state(rows);
    Mat<T> acc = Mat<T>::Zero(rows, d);
    if (sink_first) state.absorb_sinks(sinks, alpha);
    stream(state, acc, s, v, 0, keys, 7);
    if (!sink_first) {
      state.absorb_sinks(sinks, alpha);
      attn::OnlineSoftmax<T>::rescale(acc, alpha);
    }
    state.finalize(acc);
    EXPECT_TRUE(output_near<T>(acc, ref)) << "sink first " << sink_first;
    // lse includes the sink: log(exp(sink) + sum_j exp(s_j)).
    for (Index i = 0; i < rows; ++i) {
      Real sum = std::exp(s_ext(i, keys) - 20);
      for (Index j = 0; j < keys; ++j) sum += std::exp(s_ext(i, j) - 20);
      EXPECT_NEAR(double(state.log_sum_exp()(i)), double(20 + std::log(sum)),
                  Tolerance<T>::rel * 20)
          << i;
    }
  }
  // A fresh state with only a sink: l = 1 at m = sink, and the output stays 0.
  attn::OnlineSoftmax<T> empty(rows);
  empty.absorb_sink(T(1.5), alpha);
  EXPECT_TRUE((empty.running_max() == T(1.5)).all());
  EXPECT_TRUE((empty.running_sum() == T(1)).all());
}

}  // namespace
