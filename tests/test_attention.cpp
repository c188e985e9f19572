// The fused kernel (attn/attention.hpp) against the long-double reference of tests/support.hpp:
// odd sizes, tile edges, heads and grouped-query layouts, masks, causal alignment, fully masked
// rows, large logits, the log-sum-exp, and bitwise determinism across thread counts.
#include <attn/attention.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class Attention : public ::testing::Test {};
TYPED_TEST_SUITE(Attention, Scalars);

struct Case {
  Index n_q, n_k, d_k, d_v;
  int heads = 1, kv_heads = 0;
};

// The reference's rules for what Options asks.
RefMask with_options(RefMask m, const attn::Options& o) {
  m.causal = o.causal;
  m.left = o.window.left;
  m.right = o.window.right;
  m.softcap = o.softcap;
  m.alibi = o.alibi_slopes;
  m.sinks = o.sinks;
  return m;
}

// Runs the fused kernel and checks output and lse against the reference, head by head.
template <class T, class... MaskArg>
::testing::AssertionResult matches_reference(const Case& c, const attn::Options& o,
                                             const RefMask& ref_mask, const MaskArg&... mask) {
  const int kv = c.kv_heads ? c.kv_heads : c.heads;
  const std::uint64_t seed = 1000 * c.n_q + 100 * c.n_k + 10 * c.d_k + c.d_v + c.heads + kv;
  const Mat<T> q = normal<T>(c.n_q, c.heads * c.d_k, seed);
  const Mat<T> k = normal<T>(c.n_k, kv * c.d_k, seed + 1);
  const Mat<T> v = normal<T>(c.n_k, kv * c.d_v, seed + 2);
  attn::Options opt = o;
  opt.heads = c.heads;
  opt.kv_heads = c.kv_heads;
  const auto got = attn::attention_with_lse(q, k, v, mask..., opt);
  const Real scale = o.scale ? Real(*o.scale) : 1 / std::sqrt(Real(c.d_k));
  const RefMask m = with_options(ref_mask, o);
  const Reference ref = reference_heads(to_real(q), to_real(k), to_real(v), c.heads, kv, scale, m);
  auto out = output_near<T>(got.output, ref);
  if (!out)
    return out << " (n_q " << c.n_q << ", n_k " << c.n_k << ", d_k " << c.d_k << ", d_v " << c.d_v
               << ", heads " << c.heads << "/" << kv << ")";
  return lse_near<T>(got.lse, ref.lse);
}

// Sizes around the tiles (48 x 64 by default; 16 and 6 for the micro-tiles), n_q != n_k,
// d_k != d_v, d from 1 to 256, and n_q <= 4 (the decode path).
const Case kOddSizes[] = {
    {1, 1, 1, 1},       {1, 300, 64, 64},   {3, 257, 17, 5},  {4, 1000, 128, 128},
    {5, 7, 3, 2},       {47, 65, 8, 8},     {49, 130, 17, 9}, {64, 64, 64, 64},
    {97, 31, 32, 48},   {130, 97, 128, 33}, {200, 129, 1, 7}, {16, 600, 256, 256},
    {193, 250, 64, 64}, {6, 6, 6, 6},       {7, 5, 2, 1},     {300, 1, 4, 4},
};

TYPED_TEST(Attention, OddSizesMatchReference) {
  for (const Case& c : kOddSizes) EXPECT_TRUE(matches_reference<TypeParam>(c, {}, {}));
}

TYPED_TEST(Attention, HeadsAndGroupedQueryMatchReference) {
  const Case cases[] = {
      {50, 70, 16, 8, 2, 0},    {50, 70, 16, 8, 4, 2},  {50, 70, 8, 16, 4, 1},
      {33, 90, 12, 12, 6, 3},   {1, 300, 32, 32, 8, 2}, {3, 129, 16, 24, 6, 1},
      {100, 100, 64, 64, 3, 3},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(matches_reference<TypeParam>(c, {}, {}));
    EXPECT_TRUE(matches_reference<TypeParam>(c, {.causal = true}, {}));
  }
}

TYPED_TEST(Attention, CausalMatchesReferenceForEveryAlignment) {
  // n_q < n_k: the queries are the last n_q positions; n_q > n_k: the first rows see nothing.
  const Case cases[] = {{100, 100, 16, 16}, {37, 150, 16, 8}, {150, 37, 8, 16},  {1, 70, 8, 8},
                        {3, 70, 8, 8},      {4, 2, 8, 8},     {200, 300, 64, 64}};
  for (const Case& c : cases) EXPECT_TRUE(matches_reference<TypeParam>(c, {.causal = true}, {}));
}

TYPED_TEST(Attention, BooleanAndAdditiveMasksMatchReference) {
  using T = TypeParam;
  for (const Case& c : {Case{70, 90, 16, 16, 2, 1}, Case{2, 300, 16, 16, 4, 2}}) {
    const BoolMatrix allow = random_bool(c.n_q, c.n_k, 7);
    const Mat<T> bias = normal<T>(c.n_q, c.n_k, 8, 2.0);
    const RealMatrix bias_real = to_real(bias);
    EXPECT_TRUE(matches_reference<T>(c, {}, {.allow = &allow}, allow));
    EXPECT_TRUE(matches_reference<T>(c, {}, {.bias = &bias_real}, bias));
    EXPECT_TRUE(matches_reference<T>(c, {.causal = true}, {.allow = &allow}, allow));
    // A mask as an Eigen expression works without evaluating it first.
    EXPECT_TRUE(matches_reference<T>(c, {.causal = true}, {.bias = &bias_real}, bias.array()));
  }
}

TYPED_TEST(Attention, FullyMaskedRowsAreZeroWithLseMinusInfinity) {
  using T = TypeParam;
  for (const Index n_q : {Index(2), Index(60)}) {
    const Index n_k = 80;
    BoolMatrix allow = random_bool(n_q, n_k, 9);
    allow.row(1).setConstant(false);
    const Mat<T> q = normal<T>(n_q, 16, 1), k = normal<T>(n_k, 16, 2), v = normal<T>(n_k, 8, 3);
    const auto r = attn::attention_with_lse(q, k, v, allow);
    EXPECT_TRUE((r.output.row(1).array() == T(0)).all());
    EXPECT_EQ(r.lse(1, 0), -std::numeric_limits<T>::infinity());
    EXPECT_TRUE(r.output.allFinite());
    // Causal with n_q > n_k: the first n_q - n_k rows see no key.
    const Mat<T> k_short = normal<T>(n_q / 2, 16, 4), v_short = normal<T>(n_q / 2, 8, 5);
    const auto c = attn::attention_with_lse(q, k_short, v_short, {.causal = true});
    EXPECT_TRUE((c.output.topRows(n_q - n_q / 2).array() == T(0)).all());
    EXPECT_TRUE(c.output.allFinite());
    EXPECT_TRUE(matches_reference<T>({n_q, 0, 16, 8}, {}, {}));  // no keys at all
  }
}

TYPED_TEST(Attention, LargeLogitsStayFiniteAndMatch) {
  using T = TypeParam;
  // Scores around 1e4 would overflow exp without the running max; 0.2 * max float would overflow
  // the scaled product in float, so the scale stays moderate and Q carries the size.
  for (const Case& c : {Case{60, 90, 16, 16}, Case{1, 400, 16, 16}}) {
    const Mat<T> q = normal<T>(c.n_q, c.d_k, 11, 300.0), k = normal<T>(c.n_k, c.d_k, 12, 3.0);
    const Mat<T> v = normal<T>(c.n_k, c.d_v, 13);
    const Mat<T> o = attn::scaled_dot_product_attention(q, k, v);
    ASSERT_TRUE(o.allFinite());
    const Reference ref =
        reference_attention(to_real(q), to_real(k), to_real(v), 1 / std::sqrt(Real(c.d_k)));
    EXPECT_TRUE(output_near<T>(o, ref));
  }
}

TYPED_TEST(Attention, EqualsTheComposedPath) {
  using T = TypeParam;
  const Mat<T> q = normal<T>(90, 4 * 16, 21), k = normal<T>(110, 2 * 16, 22),
               v = normal<T>(110, 2 * 24, 23);
  const BoolMatrix allow = random_bool(90, 110, 24);
  const attn::Options o{.causal = true, .heads = 4, .kv_heads = 2};
  const Mat<T> fused = attn::scaled_dot_product_attention(q, k, v, allow, o);
  const Mat<T> composed = attn::reference::scaled_dot_product_attention(q, k, v, allow, o);
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  EXPECT_LE((fused - composed).cwiseAbs().maxCoeff(), tol);
}

TYPED_TEST(Attention, SmallTilesCoverEveryEdge) {
  using T = TypeParam;
  constexpr int Q = 2 * attn::detail::packet_size<T>;
  const attn::Options rules[] = {
      {},
      {.causal = true},
      {.window = {3, 2}},
      {.causal = true, .window = {6, attn::Window::unbounded}},
      {.window = {attn::Window::unbounded, 4}},
  };
  for (const Case& c :
       {Case{37, 41, 5, 3, 2, 1}, Case{Q, 5, 8, 8}, Case{Q + 1, 11, 3, 9}, Case{45, 60, 4, 4}}) {
    for (attn::Options o : rules) {
      const int kv = c.kv_heads ? c.kv_heads : c.heads;
      const Mat<T> q = normal<T>(c.n_q, c.heads * c.d_k, 31), k = normal<T>(c.n_k, kv * c.d_k, 32),
                   v = normal<T>(c.n_k, kv * c.d_v, 33);
      o.heads = c.heads;
      o.kv_heads = c.kv_heads;
      auto l = attn::detail::head_layout("test", q, k, o);
      attn::detail::add_values("test", l, k, v);
      Mat<T> out, lse;
      // Q tiles of one QK micro-tile, key tiles of 5, two query tiles per key tile.
      attn::detail::fused<Q, 5, 2, T>(l, q, k, v, attn::detail::NoScoreMask{},
                                      attn::detail::checked_rules("test", o, l), 1, out, &lse);
      const Reference ref = reference_heads(to_real(q), to_real(k), to_real(v), c.heads, kv,
                                            1 / std::sqrt(Real(c.d_k)), with_options({}, o));
      EXPECT_TRUE(output_near<T>(out, ref))
          << "n_q " << c.n_q << " causal " << o.causal << " window " << o.window.left << ", "
          << o.window.right;
    }
  }
}

TYPED_TEST(Attention, AcceptsBlocksMapsAndColumnMajorInputs) {
  using T = TypeParam;
  const Mat<T> big = normal<T>(80, 40, 41);
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> k_col = normal<T>(50, 16, 42);
  const Mat<T> v = normal<T>(50, 8, 43);
  const auto q = big.block(3, 5, 60, 16);  // a strided block, read in place
  const Mat<T> o = attn::scaled_dot_product_attention(q, k_col, v);
  const Reference ref =
      reference_attention(to_real(q), to_real(k_col), to_real(v), 1 / std::sqrt(Real(16)));
  EXPECT_TRUE(output_near<T>(o, ref));
}

TYPED_TEST(Attention, StackedWeightsAndLseRebuildTheWeights) {
  using T = TypeParam;
  const int heads = 4, kv = 2;
  const Index n_q = 30, n_k = 45, d = 8;
  const Mat<T> q = normal<T>(n_q, heads * d, 51), k = normal<T>(n_k, kv * d, 52),
               v = normal<T>(n_k, kv * d, 53);
  const attn::Options o{.causal = true, .heads = heads, .kv_heads = kv};
  const Mat<T> w = attn::attention_weights(q, k, o);
  ASSERT_EQ(w.rows(), heads * n_q);
  ASSERT_EQ(w.cols(), n_k);
  RefMask m;
  m.causal = true;
  const Reference ref =
      reference_heads(to_real(q), to_real(k), to_real(v), heads, kv, 1 / std::sqrt(Real(d)), m);
  EXPECT_TRUE(weights_near<T>(w, ref));
  EXPECT_TRUE(row_stochastic(w));
  // w_hij = exp(s_hij - lse_ih): the weights from Q, K and the fused kernel's lse alone.
  const auto r = attn::attention_with_lse(q, k, v, o);
  Mat<T> rebuilt = Mat<T>::Zero(heads * n_q, n_k);
  for (int h = 0; h < heads; ++h)
    for (Index i = 0; i < n_q; ++i)
      for (Index j = 0; j < n_k; ++j)
        if (attn::causal_allows(i, j, n_q, n_k))
          rebuilt(h * n_q + i, j) = std::exp(
              q.row(i).segment(h * d, d).dot(k.row(j).segment(h / 2 * d, d)) / std::sqrt(T(d)) -
              r.lse(i, h));
  EXPECT_TRUE(weights_near<T>(rebuilt, ref));
}

TYPED_TEST(Attention, BitwiseIdenticalForEveryThreadCount) {
  using T = TypeParam;
  const Mat<T> q = normal<T>(333, 4 * 32, 61), k = normal<T>(300, 2 * 32, 62),
               v = normal<T>(300, 2 * 32, 63);
  const Mat<T> q1 = q.topRows(1), q3 = q.topRows(3);
  const Mat<T> k_long = normal<T>(3000, 2 * 32, 64), v_long = normal<T>(3000, 2 * 32, 65);
  const attn::Options plain{.heads = 4, .kv_heads = 2, .threads = 1};
  attn::Options causal = plain, rich = plain;
  causal.causal = true;
  rich.window = {40, 3};
  rich.alibi_slopes = {0.5, 0.25, 0.125, 0.0625};
  rich.softcap = 4;
  rich.sinks = {0.0, 1.0, -2.0, 3.0};
  for (const attn::Options& base : {plain, causal, rich}) {
    const auto ref = attn::attention_with_lse(q, k, v, base);
    const auto ref1 = attn::attention_with_lse(q1, k_long, v_long, base);
    const auto ref3 = attn::attention_with_lse(q3, k_long, v_long, base);
    for (const int threads : {2, 3, 4, 7}) {
      attn::Options o = base;
      o.threads = threads;
      const auto got = attn::attention_with_lse(q, k, v, o);
      EXPECT_TRUE(got.output == ref.output && got.lse == ref.lse) << threads << " threads";
      EXPECT_TRUE(attn::attention_with_lse(q1, k_long, v_long, o).output == ref1.output);
      EXPECT_TRUE(attn::attention_with_lse(q3, k_long, v_long, o).lse == ref3.lse);
    }
  }
}

TYPED_TEST(Attention, RejectsBadHeadLayouts) {
  using T = TypeParam;
  const char* sdpa = "attn::scaled_dot_product_attention";
  const Mat<T> q(4, 12), k(5, 6), v(5, 6);
  const auto run = [&](const Mat<T>& qq, const Mat<T>& kk, const Mat<T>& vv, attn::Options o) {
    return [&, o] { attn::scaled_dot_product_attention(qq, kk, vv, o); };
  };
  EXPECT_TRUE(throws_invalid(run(q, k, v, {.heads = 0}), {sdpa, "heads is 0"}));
  EXPECT_TRUE(throws_invalid(run(q, k, v, {.heads = 2, .kv_heads = -1}), {sdpa, "kv_heads is -1"}));
  EXPECT_TRUE(throws_invalid(run(q, k, v, {.heads = 4, .kv_heads = 3}),
                             {sdpa, "4x12", "5x6", "heads = 4 and kv_heads = 3"}));
  EXPECT_TRUE(throws_invalid(run(q, k, v, {.heads = 5}), {sdpa, "4x12", "5 heads"}));
  // heads 2 over kv_heads 1: d_k = 6, and K has kv_heads·d_k = 6 columns, so this one is valid.
  EXPECT_NO_THROW(run(q, k, v, {.heads = 2, .kv_heads = 1})());
  EXPECT_TRUE(throws_invalid(run(q, k, v, {.heads = 4, .kv_heads = 1}),
                             {sdpa, "4x12", "5x6", "kv_heads·d_k = 3"}));
  const Mat<T> v7(5, 7);
  EXPECT_TRUE(
      throws_invalid(run(q, k, v7, {.heads = 4, .kv_heads = 2}), {sdpa, "5x7", "kv_heads = 2"}));
  EXPECT_TRUE(throws_invalid([&] { attn::attention_weights(q, k, {.heads = 3, .kv_heads = 2}); },
                             {"attn::attention_weights", "heads = 3 and kv_heads = 2"}));
  EXPECT_TRUE(throws_invalid([&] { attn::attention_with_lse(q, k, v, BoolMatrix(4, 4)); },
                             {"attn::attention_with_lse", "4x4", "4x5"}));
}

// Bands of every kind (left only, right only, both, with causal), n_q < n_k and n_q > n_k, bands
// narrower than a micro-tile and wider than a tile, on the prefill and the decode paths.
TYPED_TEST(Attention, SlidingWindowMatchesReference) {
  using T = TypeParam;
  constexpr Index U = attn::Window::unbounded;
  const Case cases[] = {{130, 130, 16, 16},
                        {97, 250, 8, 12, 4, 2},
                        {250, 97, 8, 8, 2, 1},
                        {3, 700, 32, 32, 4, 1},
                        {1, 600, 16, 16}};
  const attn::Window windows[] = {{0, 0}, {5, U}, {U, 7}, {3, 2}, {70, 0}, {200, 100}, {1, 300}};
  for (const Case& c : cases)
    for (const attn::Window& w : windows)
      for (const bool causal : {false, true})
        EXPECT_TRUE(matches_reference<T>(c, {.causal = causal, .window = w}, {}))
            << "window " << w.left << ", " << w.right << " causal " << causal;
}

// The check: a window is exactly the boolean band mask, given to the composed path.
TYPED_TEST(Attention, WindowEqualsTheEquivalentBooleanMask) {
  using T = TypeParam;
  const Index n_q = 150, n_k = 210;
  const Mat<T> q = normal<T>(n_q, 2 * 16, 71), k = normal<T>(n_k, 16, 72),
               v = normal<T>(n_k, 8, 73);
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  for (const attn::Window w : {attn::Window{10, 0}, attn::Window{0, 10}, attn::Window{64, 64}}) {
    const Mat<T> fused =
        attn::scaled_dot_product_attention(q, k, v, {.heads = 2, .kv_heads = 1, .window = w});
    const Mat<T> masked = attn::reference::scaled_dot_product_attention(
        q, k, v, attn::window_mask(n_q, n_k, w), {.heads = 2, .kv_heads = 1});
    EXPECT_LE((fused - masked).cwiseAbs().maxCoeff(), tol) << w.left << ", " << w.right;
  }
}

// The standard ALiBi slopes, 2^(-8 (h + 1) / heads).
std::vector<double> alibi_slopes(int heads) {
  std::vector<double> s(heads);
  for (int h = 0; h < heads; ++h) s[h] = std::exp2(-8.0 * (h + 1) / heads);
  return s;
}

std::vector<double> some_sinks(int heads) {
  std::vector<double> s(heads);
  for (int h = 0; h < heads; ++h) s[h] = -2.0 + 1.5 * h;  // from negligible to dominant
  return s;
}

// ALiBi, soft-capping and sinks, alone and together, with masks and bands, on both paths.
TYPED_TEST(Attention, AlibiSoftcapAndSinksMatchReference) {
  using T = TypeParam;
  const Case cases[] = {
      {120, 150, 16, 16, 4, 2}, {2, 500, 32, 32, 4, 1}, {70, 70, 8, 8, 2}, {150, 90, 12, 10, 3, 3}};
  for (const Case& c : cases) {
    attn::Options alibi, softcap, sinks, all;
    alibi.alibi_slopes = all.alibi_slopes = alibi_slopes(c.heads);
    softcap.softcap = all.softcap = 1.5;
    softcap.scale = 2.0;  // scores well into the saturated part of tanh
    sinks.sinks = all.sinks = some_sinks(c.heads);
    all.causal = true;
    all.window = {60, attn::Window::unbounded};
    for (const attn::Options& o : {alibi, softcap, sinks, all})
      EXPECT_TRUE(matches_reference<T>(c, o, {}))
          << "alibi " << !o.alibi_slopes.empty() << " softcap " << o.softcap << " sinks "
          << !o.sinks.empty();
    const BoolMatrix allow = random_bool(c.n_q, c.n_k, 74);
    EXPECT_TRUE(matches_reference<T>(c, all, {.allow = &allow}, allow));
  }
}

// With a sink a fully masked row still has a denominator, exp(sink): its output is 0 and its
// log-sum-exp is the sink itself.
TYPED_TEST(Attention, SinkRowsWithNothingToAttendAreZero) {
  using T = TypeParam;
  const Mat<T> q = normal<T>(60, 2 * 8, 81), k = normal<T>(20, 2 * 8, 82),
               v = normal<T>(20, 16, 83);
  const auto r =
      attn::attention_with_lse(q, k, v, {.causal = true, .heads = 2, .sinks = {1.5, -3}});
  for (Index i = 0; i < 40; ++i) {  // causal with n_q - n_k = 40: rows 0..39 see no key
    EXPECT_TRUE(r.output.row(i).isZero(0)) << i;
    EXPECT_EQ(r.lse(i, 0), T(1.5));
    EXPECT_EQ(r.lse(i, 1), T(-3));
  }
  EXPECT_TRUE(matches_reference<T>({60, 20, 8, 8, 2}, {.causal = true, .sinks = {1.5, -3}}, {}));
}

// The weights under every rule, from the composed path, against the long-double reference; with
// sinks each row sums to 1 minus the sink's share.
TYPED_TEST(Attention, WeightsFollowEveryRule) {
  using T = TypeParam;
  const int heads = 2;
  const Index n_q = 40, n_k = 55, d = 8;
  const Mat<T> q = normal<T>(n_q, heads * d, 91), k = normal<T>(n_k, d, 92);
  attn::Options o{.causal = true, .heads = heads, .kv_heads = 1, .window = {20, 0}};
  o.alibi_slopes = alibi_slopes(heads);
  o.softcap = 2;
  o.sinks = some_sinks(heads);
  const Mat<T> w = attn::attention_weights(q, k, o);
  const Reference ref = reference_heads(to_real(q), to_real(k), RealMatrix::Zero(n_k, 1), heads, 1,
                                        1 / std::sqrt(Real(d)), with_options({}, o));
  EXPECT_TRUE(weights_near<T>(w, ref));
  for (int h = 0; h < heads; ++h)
    for (Index i = 0; i < n_q; ++i) {
      const Real share = std::exp(Real(o.sinks[h]) - ref.lse(i, h));
      EXPECT_NEAR(double(w.row(h * n_q + i).template cast<Real>().sum() + share), 1.0,
                  Tolerance<T>::rel);
    }
}

TYPED_TEST(Attention, RejectsBadRules) {
  using T = TypeParam;
  const Mat<T> q(4, 8), k(5, 8), v(5, 8);  // two heads of d_k = 4, two KV heads
  const auto sdpa = [&](attn::Options o) {
    return [&, o] { attn::scaled_dot_product_attention(q, k, v, o); };
  };
  const char* fn = "attn::scaled_dot_product_attention";
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .window = {-2, 0}}), {fn, "window.left is -2"}));
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .window = {0, -5}}), {fn, "window.right is -5"}));
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .alibi_slopes = {0.5}}),
                             {fn, "alibi_slopes has 1 values", "heads = 2"}));
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .softcap = -1}), {fn, "softcap"}));
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .softcap = std::numeric_limits<double>::infinity()}),
                             {fn, "softcap"}));
  EXPECT_TRUE(throws_invalid(sdpa({.heads = 2, .sinks = {0, std::nan("")}}), {fn, "sinks"}));
  EXPECT_TRUE(throws_invalid([&] { attn::attention_weights(q, k, {.heads = 2, .sinks = {1}}); },
                             {"attn::attention_weights", "sinks has 1 values"}));
}

// Two disjoint key ranges, attended apart and merged through their lse, give the whole: also
// when one range is masked for some rows (lse -inf) or for all of them.
TYPED_TEST(Attention, MergeOfTwoKeyRangesEqualsTheWhole) {
  using T = TypeParam;
  const Index n_q = 70, n_k = 230, split = 101;
  const Mat<T> q = normal<T>(n_q, 2 * 16, 101), k = normal<T>(n_k, 16, 102),
               v = normal<T>(n_k, 24, 103);
  const attn::Options o{.causal = true, .heads = 2, .kv_heads = 1};
  // Causal with n_q < n_k: every query sees the first range; the second is cut per row, and
  // with a mask some rows see none of it.
  BoolMatrix allow = random_bool(n_q, n_k, 104);
  allow.block(0, split, 10, n_k - split).setConstant(false);
  // Each range alone would align causal to itself, so the whole's causal rule goes in the masks:
  // it admits all of the first range for every query, and cuts the second per row.
  attn::Options ob = o;
  ob.causal = false;
  const auto a =
      attn::attention_with_lse(q, k.topRows(split), v.topRows(split), allow.leftCols(split), ob);
  BoolMatrix allow_b = allow.rightCols(n_k - split);
  for (Index i = 0; i < n_q; ++i)
    for (Index j = 0; j < n_k - split; ++j)
      allow_b(i, j) = allow_b(i, j) && split + j <= i + n_k - n_q;
  const auto b = attn::attention_with_lse(q, k.bottomRows(n_k - split), v.bottomRows(n_k - split),
                                          allow_b, ob);
  const auto merged = attn::merge_attention(a, b);
  RefMask m;
  m.allow = &allow;
  m.causal = true;
  const Reference ref =
      reference_heads(to_real(q), to_real(k), to_real(v), 2, 1, 1 / std::sqrt(Real(16)), m);
  EXPECT_TRUE(output_near<T>(merged.output, ref));
  EXPECT_TRUE(lse_near<T>(merged.lse, ref.lse));
  // Merging with a part that attends nothing changes nothing.
  const attn::AttentionOutput<T> empty{
      Mat<T>::Zero(n_q, 48), Mat<T>::Constant(n_q, 2, -std::numeric_limits<T>::infinity())};
  const auto same = attn::merge_attention(merged, empty);
  EXPECT_EQ(same.output, merged.output);
  EXPECT_EQ(same.lse, merged.lse);
  EXPECT_EQ(attn::merge_attention(empty, merged).output, merged.output);
  EXPECT_TRUE(attn::merge_attention(empty, empty).output.isZero(0));
  const attn::AttentionOutput<T> narrow{Mat<T>::Zero(n_q, 24), Mat<T>::Zero(n_q, 2)};
  EXPECT_TRUE(throws_invalid([&] { attn::merge_attention(a, narrow); },
                             {"attn::merge_attention", "70x48", "70x24"}));
}

}  // namespace
