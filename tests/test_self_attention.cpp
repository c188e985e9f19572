#include "attn/self_attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class SelfAttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(SelfAttentionTest, Scalars);

// Q = X w_q + b_q and so on, in long double.
template <class Layer>
Reference reference_layer(const Layer& layer, const RealMatrix& x, const RefMask& mask = {}) {
  const auto proj = [&](const auto& w, const auto& b) {
    RealMatrix y = x * to_real(w);
    y.rowwise() += to_real(b).row(0);
    return y;
  };
  return reference_attention(proj(layer.w_q(), layer.b_q()), proj(layer.w_k(), layer.b_k()),
                             proj(layer.w_v(), layer.b_v()),
                             1 / std::sqrt(static_cast<Real>(layer.d_k())), mask);
}

template <class Layer>
void randomise_biases(Layer& layer) {
  using T = typename Layer::Scalar;
  layer.b_q() = normal<T>(1, layer.d_k(), 1);
  layer.b_k() = normal<T>(1, layer.d_k(), 2);
  layer.b_v() = normal<T>(1, layer.d_v(), 3);
}

TYPED_TEST(SelfAttentionTest, ForwardMatchesLongDoubleReference) {
  using T = TypeParam;
  attn::SelfAttention<T> layer(32, 16, 8, /*seed=*/5);
  randomise_biases(layer);
  const Mat<T> x = normal<T>(20, 32, 6);
  EXPECT_TRUE(output_near<T>(layer.forward(x), reference_layer(layer, to_real(x))));
  EXPECT_TRUE(output_near<T>(layer.forward(x, {.causal = true}),
                             reference_layer(layer, to_real(x), {.causal = true})));
  EXPECT_TRUE(weights_near<T>(layer.attention_weights(x), reference_layer(layer, to_real(x))));
  const BoolMatrix allow = random_bool(20, 20, 7);
  EXPECT_TRUE(output_near<T>(layer.forward(x, allow),
                             reference_layer(layer, to_real(x), {.allow = &allow})));
}

TYPED_TEST(SelfAttentionTest, WeightsAreRowStochastic) {
  using T = TypeParam;
  attn::SelfAttention<T, 8> layer(24);
  const Mat<T> x = normal<T>(30, 24, 8, 3.0);
  EXPECT_TRUE(row_stochastic(layer.attention_weights(x)));
  EXPECT_TRUE(row_stochastic(layer.attention_weights(x, {.causal = true})));
}

TYPED_TEST(SelfAttentionTest, IsPermutationEquivariant) {
  using T = TypeParam;
  attn::SelfAttention<T> layer(16, 8, 8, 9);
  randomise_biases(layer);
  const Index n = 12;
  const Mat<T> x = normal<T>(n, 16, 10);
  std::vector<Index> perm(n);
  std::iota(perm.begin(), perm.end(), Index{0});
  std::reverse(perm.begin(), perm.begin() + 7);
  std::swap(perm[8], perm[11]);
  Mat<T> px(n, 16);
  for (Index i = 0; i < n; ++i) px.row(i) = x.row(perm[i]);
  const Mat<T> out = layer.forward(x), permuted_out = layer.forward(px);
  RealMatrix want(n, out.cols());
  for (Index i = 0; i < n; ++i) want.row(i) = to_real(out.row(perm[i]));
  EXPECT_TRUE(near_rel(permuted_out, want, 4 * Tolerance<T>::rel, 1.0L));
}

TYPED_TEST(SelfAttentionTest, CausalOutputIgnoresLaterTokens) {
  using T = TypeParam;
  attn::SelfAttention<T, 4, 6> layer(10, 3);
  const Index n = 9;
  const Mat<T> x = normal<T>(n, 10, 11);
  const Mat<T> out = layer.forward(x, {.causal = true});
  for (Index i : {0, 4, 7}) {
    Mat<T> changed = x;
    changed.bottomRows(n - 1 - i) = normal<T>(n - 1 - i, 10, 12 + i, 5.0);
    EXPECT_EQ(layer.forward(changed, {.causal = true}).topRows(i + 1), out.topRows(i + 1)) << i;
  }
}

TYPED_TEST(SelfAttentionTest, SameSeedSameLayer) {
  using T = TypeParam;
  attn::SelfAttention<T, 8> fixed(16, 123);
  attn::SelfAttention<T> dynamic(16, 8, 8, 123);
  attn::SelfAttention<T> other(16, 8, 8, 124);
  EXPECT_EQ(Mat<T>(fixed.w_q()), Mat<T>(dynamic.w_q()));
  EXPECT_EQ(Mat<T>(fixed.w_k()), Mat<T>(dynamic.w_k()));
  EXPECT_EQ(Mat<T>(fixed.w_v()), Mat<T>(dynamic.w_v()));
  EXPECT_NE(Mat<T>(other.w_q()), Mat<T>(dynamic.w_q()));
  EXPECT_NE(Mat<T>(dynamic.w_q()), Mat<T>(dynamic.w_k()));  // three separate draws
  const Mat<T> x = normal<T>(5, 16, 13);
  EXPECT_TRUE(near_rel(fixed.forward(x), to_real(dynamic.forward(x)), Tolerance<T>::rel, 1.0L));
}

TYPED_TEST(SelfAttentionTest, StartsFromGlorotUniformAndZeroBiases) {
  using T = TypeParam;
  attn::SelfAttention<T> layer(64, 16, 32);
  EXPECT_LE(layer.w_q().cwiseAbs().maxCoeff(), static_cast<T>(std::sqrt(6.0 / (64 + 16))));
  EXPECT_LE(layer.w_v().cwiseAbs().maxCoeff(), static_cast<T>(std::sqrt(6.0 / (64 + 32))));
  EXPECT_GT(layer.w_v().cwiseAbs().maxCoeff(), static_cast<T>(0.9 * std::sqrt(6.0 / (64 + 32))));
  EXPECT_TRUE(layer.b_q().isZero(0));
  EXPECT_TRUE(layer.b_k().isZero(0));
  EXPECT_TRUE(layer.b_v().isZero(0));
  EXPECT_EQ(layer.w_q().rows(), 64);
  EXPECT_EQ(layer.w_q().cols(), 16);
  EXPECT_EQ(layer.w_v().cols(), 32);
}

TYPED_TEST(SelfAttentionTest, BadShapesThrow) {
  using T = TypeParam;
  attn::SelfAttention<T> layer(16, 8, 4);
  const Mat<T> x15 = normal<T>(5, 15, 1), x = normal<T>(5, 16, 2);
  EXPECT_TRUE(
      throws_invalid([&] { layer.forward(x15); }, {"attn::SelfAttention::forward", "5x15", "16"}));
  EXPECT_TRUE(throws_invalid([&] { layer.attention_weights(x15); },
                             {"attn::SelfAttention::attention_weights", "5x15"}));
  const BoolMatrix mask = BoolMatrix::Constant(5, 4, true);
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x, mask); },
                             {"attn::SelfAttention::forward", "5x4", "5x5"}));

  EXPECT_TRUE(
      throws_invalid([] { attn::SelfAttention<T>(16, 0, 4); }, {"attn::SelfAttention", "d_k = 0"}));
  EXPECT_TRUE(throws_invalid([] { attn::SelfAttention<T>(0, 8, 4); },
                             {"attn::SelfAttention", "d_model = 0"}));
  EXPECT_TRUE(throws_invalid([] { attn::SelfAttention<T, 8>(16, 4, 8); },
                             {"attn::SelfAttention", "d_k = 4", "d_k = 8"}));

  attn::SelfAttention<T> resized(16, 8, 4);
  resized.w_k() = Mat<T>::Zero(16, 7);
  EXPECT_TRUE(throws_invalid([&] { resized.forward(x); },
                             {"attn::SelfAttention::forward", "w_k()", "16x7", "16x8"}));
}

}  // namespace
