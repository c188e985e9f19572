// MultiHeadAttention against a long-double per-head loop written from the definition; the
// grouped-query head mapping; decoding through the cache (with RoPE) against the full forward;
// packed batches; and every error.
#include <attn/multi_head_attention.hpp>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class MultiHeadAttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(MultiHeadAttentionTest, Scalars);

// Tolerance for results that went through four projections and the attention: normwise.
template <class T>
constexpr double layer_tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;

// A layer with every parameter random (biases too), so that no term can hide.
template <class T>
attn::MultiHeadAttention<T> random_layer(Index d_model, int heads, int kv_heads, Index d_head,
                                         std::uint64_t seed) {
  attn::MultiHeadAttention<T> layer(d_model, heads, kv_heads, d_head, seed);
  layer.b_q() = normal<T>(1, heads * d_head, seed + 1, 0.5);
  layer.b_k() = normal<T>(1, kv_heads * d_head, seed + 2, 0.5);
  layer.b_v() = normal<T>(1, kv_heads * d_head, seed + 3, 0.5);
  layer.b_o() = normal<T>(1, d_model, seed + 4, 0.5);
  return layer;
}

// The layer in long double: projections, RoPE at `positions`, each head through the reference
// attention with its key/value head h / (heads / kv_heads), the output projection.
template <class T>
RealMatrix reference_layer(const attn::MultiHeadAttention<T>& l, const RealMatrix& xq,
                           const RealMatrix& xkv, RefMask m = {},
                           const std::vector<Index>* q_positions = nullptr,
                           const std::vector<Index>* k_positions = nullptr) {
  RealMatrix q = reference_project(xq, to_real(l.w_q()), to_real(l.b_q()));
  RealMatrix k = reference_project(xkv, to_real(l.w_k()), to_real(l.b_k()));
  const RealMatrix v = reference_project(xkv, to_real(l.w_v()), to_real(l.b_v()));
  if (l.rope()) {
    const bool inter = l.rope()->style == attn::RopeStyle::interleaved;
    const auto pq = q_positions ? *q_positions : positions_from(0, q.rows());
    const auto pk = k_positions ? *k_positions : positions_from(0, k.rows());
    q = reference_rope(q, l.heads(), pq, l.rope()->base, inter, l.rope()->rotary_dim);
    k = reference_rope(k, l.kv_heads(), pk, l.rope()->base, inter, l.rope()->rotary_dim);
  }
  const Reference r =
      reference_heads(q, k, v, l.heads(), l.kv_heads(), 1 / std::sqrt(Real(l.d_head())), m);
  return reference_project(r.o, to_real(l.w_o()), to_real(l.b_o()));
}

TYPED_TEST(MultiHeadAttentionTest, ForwardMatchesTheLongDoubleReference) {
  using T = TypeParam;
  const auto layer = random_layer<T>(48, 6, 6, 8, 1);
  const Mat<T> x = normal<T>(70, 48, 2);
  EXPECT_TRUE(near_normwise(layer.forward(x), reference_layer(layer, to_real(x), to_real(x)),
                            layer_tol<T>));
  RefMask causal;
  causal.causal = true;
  EXPECT_TRUE(near_normwise(layer.forward(x, {.causal = true}),
                            reference_layer(layer, to_real(x), to_real(x), causal), layer_tol<T>));
  // The one-argument constructor: head width d_model / heads.
  attn::MultiHeadAttention<T> plain(32, 4);
  EXPECT_EQ(plain.d_head(), 8);
  EXPECT_EQ(plain.kv_heads(), 4);
  const Mat<T> x2 = normal<T>(9, 32, 3);
  EXPECT_TRUE(near_normwise(plain.forward(x2), reference_layer(plain, to_real(x2), to_real(x2)),
                            layer_tol<T>));
}

TYPED_TEST(MultiHeadAttentionTest, GroupedQueryCrossAttentionAndMasks) {
  using T = TypeParam;
  // 8 query heads of 12 over 2 key/value heads, heads·d_head != d_model.
  const auto layer = random_layer<T>(40, 8, 2, 12, 4);
  const Mat<T> xq = normal<T>(33, 40, 5), xkv = normal<T>(57, 40, 6);
  EXPECT_TRUE(near_normwise(layer.forward(xq, xkv),
                            reference_layer(layer, to_real(xq), to_real(xkv)), layer_tol<T>));
  const BoolMatrix allow = random_bool(33, 57, 7);
  RefMask m;
  m.allow = &allow;
  EXPECT_TRUE(near_normwise(layer.forward(xq, xkv, allow),
                            reference_layer(layer, to_real(xq), to_real(xkv), m), layer_tol<T>));
}

// The mapping of query heads to key/value heads, checked against plain multi-head attention: a
// GQA layer equals the MHA layer whose key and value heads are copies, head h getting the
// projections of key/value head h / (heads / kv_heads).
TYPED_TEST(MultiHeadAttentionTest, GroupedQueryEqualsMultiHeadWithSharedHeadsCopied) {
  using T = TypeParam;
  const int heads = 6, kv_heads = 2, group = heads / kv_heads;
  const Index d_model = 24, d = 4;
  const auto gqa = random_layer<T>(d_model, heads, kv_heads, d, 8);
  attn::MultiHeadAttention<T> mha(d_model, heads, heads, d);
  mha.w_q() = gqa.w_q();
  mha.b_q() = gqa.b_q();
  mha.w_o() = gqa.w_o();
  mha.b_o() = gqa.b_o();
  for (int h = 0; h < heads; ++h) {
    const int g = h / group;
    mha.w_k().middleCols(h * d, d) = gqa.w_k().middleCols(g * d, d);
    mha.w_v().middleCols(h * d, d) = gqa.w_v().middleCols(g * d, d);
    mha.b_k().segment(h * d, d) = gqa.b_k().segment(g * d, d);
    mha.b_v().segment(h * d, d) = gqa.b_v().segment(g * d, d);
  }
  const Mat<T> x = normal<T>(40, d_model, 9);
  const Mat<T> a = gqa.forward(x, {.causal = true}), b = mha.forward(x, {.causal = true});
  EXPECT_LE((a - b).cwiseAbs().maxCoeff(), T(layer_tol<T>) * b.cwiseAbs().maxCoeff());
}

TYPED_TEST(MultiHeadAttentionTest, AttentionWeightsOnePerHead) {
  using T = TypeParam;
  const auto layer = random_layer<T>(16, 4, 2, 4, 10);
  const Mat<T> x = normal<T>(11, 16, 11);
  const auto w = layer.attention_weights(x, {.causal = true});
  ASSERT_EQ(w.size(), 4u);
  const RealMatrix q = reference_project(to_real(x), to_real(layer.w_q()), to_real(layer.b_q()));
  const RealMatrix k = reference_project(to_real(x), to_real(layer.w_k()), to_real(layer.b_k()));
  RefMask causal;
  causal.causal = true;
  const Reference r =
      reference_heads(q, k, RealMatrix::Zero(11, 2), 4, 2, 1 / std::sqrt(Real(4)), causal);
  for (int h = 0; h < 4; ++h) {
    EXPECT_TRUE(row_stochastic(w[h])) << h;
    EXPECT_TRUE(near_normwise(w[h], r.w.middleRows(h * 11, 11), layer_tol<T>)) << h;
  }
}

TYPED_TEST(MultiHeadAttentionTest, RopeFollowsTheTokenPositions) {
  using T = TypeParam;
  auto layer = random_layer<T>(32, 4, 2, 8, 12);
  layer.rope() = attn::Rope{.base = 500, .style = attn::RopeStyle::interleaved};
  const Mat<T> x = normal<T>(25, 32, 13);
  RefMask causal;
  causal.causal = true;
  EXPECT_TRUE(near_normwise(layer.forward(x, {.causal = true}),
                            reference_layer(layer, to_real(x), to_real(x), causal), layer_tol<T>));
  // Without RoPE the layer is permutation-equivariant; with it, it is not: positions count.
  auto no_rope = layer;
  no_rope.rope().reset();
  EXPECT_FALSE(
      near_normwise(layer.forward(x), reference_layer(no_rope, to_real(x), to_real(x)), 1e-3));
}

// Decoding through the cache, token by token or in chunks, with RoPE at the cache's positions,
// gives the causal forward of the whole sequence.
TYPED_TEST(MultiHeadAttentionTest, DecodingThroughTheCacheEqualsTheCausalForward) {
  using T = TypeParam;
  auto layer = random_layer<T>(32, 8, 2, 8, 14);
  layer.rope() = attn::Rope{};
  const Index n = 90;
  const Mat<T> x = normal<T>(n, 32, 15);
  const Mat<T> full = layer.forward(x, {.causal = true});
  RefMask causal;
  causal.causal = true;
  const RealMatrix ref = reference_layer(layer, to_real(x), to_real(x), causal);
  EXPECT_TRUE(near_normwise(full, ref, layer_tol<T>));
  for (const Index chunk : {Index(1), Index(4), Index(13), Index(90)}) {
    auto cache = layer.make_cache(n);
    Mat<T> y(n, 32);
    for (Index i = 0; i < n; i += chunk) {
      const Index m = std::min(chunk, n - i);
      y.middleRows(i, m) = layer.forward(x.middleRows(i, m), cache);
    }
    EXPECT_TRUE(near_normwise(y, ref, layer_tol<T>)) << "chunk " << chunk;
    if (chunk == n) {
      EXPECT_EQ(y, full);  // one prefill: the very same computation
    }
    EXPECT_TRUE(throws_invalid([&] { layer.forward(x.topRows(1), cache); },
                               {"attn::KVCache::append", "max_tokens = 90"}));
  }
  // A sliding-window cache: the window rule on the whole sequence.
  const Index window = 10, sinks = 2;
  BoolMatrix allow(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) allow(i, j) = j <= i && (j < sinks || j > i - window);
  RefMask m;
  m.allow = &allow;
  const RealMatrix ref_window = reference_layer(layer, to_real(x), to_real(x), m);
  auto ring = layer.make_cache(window + sinks, {.window = window, .sink_tokens = sinks});
  Mat<T> y(n, 32);
  for (Index i = 0; i < n; ++i) y.row(i) = layer.forward(x.row(i), ring);
  EXPECT_TRUE(near_normwise(y, ref_window, layer_tol<T>));
}

TYPED_TEST(MultiHeadAttentionTest, PackedBatchEqualsEachSequenceAlone) {
  using T = TypeParam;
  auto layer = random_layer<T>(32, 4, 1, 8, 16);
  layer.rope() = attn::Rope{};
  const std::vector<Index> offsets{0, 30, 31, 31, 100};
  const Mat<T> x = normal<T>(100, 32, 17);
  const Mat<T> y = layer.forward_varlen(x, offsets, {.causal = true});
  RefMask causal;
  causal.causal = true;
  for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
    const Index b = offsets[s], len = offsets[s + 1] - b;
    const RealMatrix xs = to_real(x.middleRows(b, len));
    EXPECT_TRUE(
        near_normwise(y.middleRows(b, len), reference_layer(layer, xs, xs, causal), layer_tol<T>))
        << "sequence " << s;
  }
}

TYPED_TEST(MultiHeadAttentionTest, RejectsBadShapesAndHeadCounts) {
  using T = TypeParam;
  using MHA = attn::MultiHeadAttention<T>;
  EXPECT_TRUE(throws_invalid([] { MHA(30, 4); },
                             {"attn::MultiHeadAttention", "d_model = 30", "heads = 4"}));
  EXPECT_TRUE(throws_invalid([] { MHA(32, 6, 4, 8); }, {"heads = 6", "kv_heads = 4", "multiple"}));
  EXPECT_TRUE(throws_invalid([] { MHA(32, 4, 0, 8); }, {"kv_heads = 0"}));
  EXPECT_TRUE(throws_invalid([] { MHA(32, 4, 2, 0); }, {"d_head = 0"}));
  MHA layer(32, 4, 2, 8);
  const Mat<T> x = normal<T>(5, 32, 18), bad = normal<T>(5, 31, 19);
  const char* fn = "attn::MultiHeadAttention::forward";
  EXPECT_TRUE(throws_invalid([&] { layer.forward(bad); }, {fn, "5x31", "d_model is 32"}));
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x, bad); }, {fn, "Xkv 5x31"}));
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x, {.heads = 8}); },
                             {fn, "heads = 8", "layer has heads = 4"}));
  EXPECT_NO_THROW(layer.forward(x, {.heads = 4, .kv_heads = 2}));
  EXPECT_TRUE(
      throws_invalid([&] { layer.forward(x, x, BoolMatrix::Ones(5, 4)); }, {"mask is 5x4"}));
  auto cache = attn::KVCache<T>(10, 8, 16);
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x, cache); }, {fn, "16"}));
  layer.rope() = attn::Rope{.rotary_dim = 3};
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x); }, {fn, "rotary_dim is 3"}));
  layer.rope().reset();
  EXPECT_TRUE(throws_invalid(
      [&] {
        layer.forward_varlen(x, {0, 6});
      },
      {"attn::MultiHeadAttention::forward_varlen", "offsets of X", "5"}));
  layer.w_o().resize(31, 32);
  EXPECT_TRUE(throws_invalid([&] { layer.forward(x); }, {fn, "w_o() is 31x32", "must be 32x32"}));
}

}  // namespace
