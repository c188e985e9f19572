// The KV cache: its storage (append, overflow, the ring and its segments) and cached_attention,
// which fed a sequence token by token or in chunks must give the causal attention of the whole
// sequence, or through a ring the sliding-window rule, checked against the long-double reference.
#include <attn/kv_cache.hpp>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class KVCacheTest : public ::testing::Test {};
TYPED_TEST_SUITE(KVCacheTest, Scalars);

// Row p of the tokens holds p everywhere, so where a token landed can be read off its row.
template <class T>
Mat<T> numbered(Index first, Index n, Index cols) {
  Mat<T> m(n, cols);
  for (Index i = 0; i < n; ++i) m.row(i).setConstant(T(first + i));
  return m;
}

TYPED_TEST(KVCacheTest, AppendsInPlaceAndRefusesOverflowUnchanged) {
  using T = TypeParam;
  attn::KVCache<T> cache(10, 4, 6);
  const T* storage = cache.keys().data();
  cache.append(numbered<T>(0, 3, 4), numbered<T>(0, 3, 6));
  cache.append(numbered<T>(3, 7, 4), numbered<T>(3, 7, 6));  // exactly full
  EXPECT_EQ(cache.size(), 10);
  EXPECT_EQ(cache.position(), 10);
  EXPECT_EQ(cache.keys().data(), storage);  // never reallocated
  EXPECT_EQ(cache.keys(), numbered<T>(0, 10, 4));
  EXPECT_EQ(cache.values(), numbered<T>(0, 10, 6));
  const Mat<T> keys = cache.keys();
  EXPECT_TRUE(throws_invalid([&] { cache.append(numbered<T>(10, 1, 4), numbered<T>(10, 1, 6)); },
                             {"attn::KVCache::append", "max_tokens = 10", "1 more"}));
  EXPECT_EQ(cache.position(), 10);
  EXPECT_EQ(cache.keys(), keys);
  ASSERT_EQ(cache.segments().size(), 1u);
  EXPECT_EQ(cache.segments()[0].rows, 10);
  cache.truncate(4);  // roll back to 4 tokens, then take others in their place
  EXPECT_EQ(cache.position(), 4);
  cache.append(numbered<T>(40, 2, 4), numbered<T>(40, 2, 6));
  EXPECT_EQ(cache.keys().topRows(6).bottomRows(2), numbered<T>(40, 2, 4));
  EXPECT_EQ(cache.keys().topRows(4), numbered<T>(0, 4, 4));
  EXPECT_TRUE(throws_invalid([&] { cache.truncate(7); }, {"attn::KVCache::truncate", "holds 6"}));
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_TRUE(cache.segments().empty());
}

TYPED_TEST(KVCacheTest, RingKeepsTheSinksAndTheLastWindowInPositionOrder) {
  using T = TypeParam;
  const Index sinks = 2, window = 5;
  attn::KVCache<T> cache(7, 3, 3, {.window = window, .sink_tokens = sinks});
  EXPECT_EQ(cache.capacity(), 7);
  Index next = 0;
  for (const Index chunk : {1, 1, 3, 4, 1, 9, 2, 5, 1, 1, 1}) {
    cache.append(numbered<T>(next, chunk, 3), numbered<T>(next, chunk, 3));
    next += chunk;
    EXPECT_EQ(cache.position(), next);
    // Held: positions [0, min(next, sinks)) and [max(sinks, next - window), next), in order.
    std::vector<Index> want;
    for (Index p = 0; p < std::min(next, sinks); ++p) want.push_back(p);
    for (Index p = std::max(sinks, next - window); p < next; ++p) want.push_back(p);
    std::vector<Index> got;
    for (const auto& s : cache.segments())
      for (Index r = 0; r < s.rows; ++r) {
        EXPECT_EQ(cache.keys()(s.row + r, 0), T(s.position + r)) << "after " << next;
        got.push_back(s.position + r);
      }
    EXPECT_EQ(got, want) << "after " << next;
    EXPECT_EQ(cache.size(), Index(want.size()));
  }
}

TYPED_TEST(KVCacheTest, RejectsBadShapesAndPolicies) {
  using T = TypeParam;
  EXPECT_TRUE(throws_invalid([] { attn::KVCache<T>(4, 0, 2); }, {"attn::KVCache", "widths"}));
  EXPECT_TRUE(throws_invalid([] { attn::KVCache<T>(4, 2, 2, {.window = 4, .sink_tokens = 1}); },
                             {"attn::KVCache", "sink_tokens + window = 5"}));
  EXPECT_TRUE(throws_invalid([] { attn::KVCache<T>(4, 2, 2, {.window = 0, .sink_tokens = 1}); },
                             {"sink tokens need a window"}));
  attn::KVCache<T> ring(4, 2, 2, {.window = 4});
  EXPECT_TRUE(throws_invalid([&] { ring.truncate(0); }, {"attn::KVCache::truncate", "windowed"}));
  attn::KVCache<T> cache(4, 2, 3);
  EXPECT_TRUE(throws_invalid([&] { cache.append(Mat<T>(1, 3), Mat<T>(1, 3)); },
                             {"keys are 1x3", "n x 2 keys"}));
  EXPECT_TRUE(throws_invalid([&] { cache.append(Mat<T>(2, 2), Mat<T>(1, 3)); },
                             {"keys are 2x2 and values 1x3"}));
}

struct Sequence {
  int heads = 4, kv_heads = 2;
  Index d = 8;
  Index n = 0;
};

template <class T>
struct Tokens {
  Mat<T> q, k, v;
  Tokens(const Sequence& s, std::uint64_t seed)
      : q(normal<T>(s.n, s.heads * s.d, seed)),
        k(normal<T>(s.n, s.kv_heads * s.d, seed + 1)),
        v(normal<T>(s.n, s.kv_heads * s.d, seed + 2)) {}
};

// Feeds the tokens through `cache` in chunks of the given sizes (cycled) and returns the rows.
template <class T>
Mat<T> feed(const Tokens<T>& t, attn::KVCache<T>& cache, const std::vector<Index>& chunks,
            const attn::Options& o) {
  Mat<T> out(t.q.rows(), 0);
  for (Index i = 0, c = 0; i < t.q.rows(); ++c) {
    const Index n = std::min(chunks[c % chunks.size()], t.q.rows() - i);
    const Mat<T> rows = attn::cached_attention(t.q.middleRows(i, n), t.k.middleRows(i, n),
                                               t.v.middleRows(i, n), cache, o);
    if (out.cols() == 0) out.resize(t.q.rows(), rows.cols());
    out.middleRows(i, n) = rows;
    i += n;
  }
  return out;
}

TYPED_TEST(KVCacheTest, TokenByTokenAndChunksEqualTheCausalForward) {
  using T = TypeParam;
  const Sequence s{4, 2, 16, 150};
  const Tokens<T> t(s, 10);
  const attn::Options o{.heads = s.heads, .kv_heads = s.kv_heads};
  attn::Options causal = o;
  causal.causal = true;
  const Mat<T> full = attn::scaled_dot_product_attention(t.q, t.k, t.v, causal);
  RefMask m;
  m.causal = true;
  const Reference ref = reference_heads(to_real(t.q), to_real(t.k), to_real(t.v), s.heads,
                                        s.kv_heads, 1 / std::sqrt(Real(s.d)), m);
  for (const std::vector<Index>& chunks :
       {std::vector<Index>{1}, {5}, {17, 1, 60}, {3, 100}, {150}}) {
    attn::KVCache<T> cache(s.n, s.kv_heads * s.d, s.kv_heads * s.d);  // filled to max_tokens
    const Mat<T> fed = feed(t, cache, chunks, o);
    EXPECT_TRUE(output_near<T>(fed, ref)) << "first chunk " << chunks[0];
    // Prefill-sized chunks run the very kernel of the full forward over the same keys.
    if (chunks[0] == 150) {
      EXPECT_EQ(fed, full);
    }
    EXPECT_EQ(cache.position(), s.n);
    // Full: one more token is refused, and the cache is as it was.
    EXPECT_TRUE(throws_invalid(
        [&] { attn::cached_attention(t.q.topRows(1), t.k.topRows(1), t.v.topRows(1), cache, o); },
        {"attn::KVCache::append", "max_tokens = 150"}));
    EXPECT_EQ(cache.position(), s.n);
  }
}

// The ring's rule as a boolean mask on the whole sequence, for the reference.
BoolMatrix window_rule(Index n, Index window, Index sinks) {
  BoolMatrix allow(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) allow(i, j) = j <= i && (j < sinks || j > i - window);
  return allow;
}

TYPED_TEST(KVCacheTest, RingGivesTheSlidingWindowRuleInEveryChunking) {
  using T = TypeParam;
  const Sequence s{4, 1, 8, 130};
  const Tokens<T> t(s, 20);
  for (const auto& [window, sinks] : {std::pair<Index, Index>{16, 0}, {7, 3}, {64, 4}, {1, 1}}) {
    const BoolMatrix allow = window_rule(s.n, window, sinks);
    RefMask m;
    m.allow = &allow;
    const Reference ref = reference_heads(to_real(t.q), to_real(t.k), to_real(t.v), s.heads,
                                          s.kv_heads, 1 / std::sqrt(Real(s.d)), m);
    for (const std::vector<Index>& chunks :
         {std::vector<Index>{1}, {3}, {window + 5, 2}, {50, 1, 9}, {130}}) {
      attn::KVCache<T> cache(sinks + window, s.kv_heads * s.d, s.kv_heads * s.d,
                             {.window = window, .sink_tokens = sinks});
      const Mat<T> fed = feed(t, cache, chunks, {.heads = s.heads, .kv_heads = s.kv_heads});
      EXPECT_TRUE(output_near<T>(fed, ref))
          << "window " << window << " sinks " << sinks << " first chunk " << chunks[0];
    }
  }
}

// ALiBi distances, soft-capping and sink logits keep their meaning across the ring's runs.
TYPED_TEST(KVCacheTest, RingKeepsEveryScoreRule) {
  using T = TypeParam;
  const Sequence s{2, 2, 8, 90};
  const Tokens<T> t(s, 30);
  const Index window = 20, sinks = 2;
  attn::Options o{.heads = s.heads, .kv_heads = s.kv_heads, .softcap = 3};
  o.alibi_slopes = {0.25, 0.0625};
  o.sinks = {0.5, -1.0};
  const BoolMatrix allow = window_rule(s.n, window, sinks);
  RefMask m;
  m.allow = &allow;
  m.softcap = 3;
  m.alibi = o.alibi_slopes;
  m.sinks = o.sinks;
  const Reference ref = reference_heads(to_real(t.q), to_real(t.k), to_real(t.v), s.heads,
                                        s.kv_heads, 1 / std::sqrt(Real(s.d)), m);
  for (const std::vector<Index>& chunks : {std::vector<Index>{1}, {7, 30}}) {
    attn::KVCache<T> cache(window + sinks, s.kv_heads * s.d, s.kv_heads * s.d,
                           {.window = window, .sink_tokens = sinks});
    EXPECT_TRUE(output_near<T>(feed(t, cache, chunks, o), ref)) << chunks[0];
  }
  // And on a plain cache, the same rules without the window.
  RefMask plain = m;
  plain.allow = nullptr;
  plain.causal = true;
  const Reference ref_plain = reference_heads(to_real(t.q), to_real(t.k), to_real(t.v), s.heads,
                                              s.kv_heads, 1 / std::sqrt(Real(s.d)), plain);
  attn::KVCache<T> cache(s.n, s.kv_heads * s.d, s.kv_heads * s.d);
  EXPECT_TRUE(output_near<T>(feed(t, cache, {1, 11}, o), ref_plain));
}

TYPED_TEST(KVCacheTest, CachedAttentionRejectsBadInputBeforeTouchingTheCache) {
  using T = TypeParam;
  attn::KVCache<T> cache(8, 2 * 4, 2 * 4);
  const Mat<T> q(2, 4 * 4), k(2, 2 * 4), v(2, 2 * 4);
  const attn::Options o{.heads = 4, .kv_heads = 2};
  const char* fn = "attn::cached_attention";
  EXPECT_TRUE(throws_invalid([&] { attn::cached_attention(q.topRows(1), k, v, cache, o); },
                             {fn, "Q is 1x16", "2x8"}));
  EXPECT_TRUE(throws_invalid([&] { attn::cached_attention(q, k, v, cache, {.heads = 4}); }, {fn}));
  attn::KVCache<T> narrow(8, 4, 8);
  EXPECT_TRUE(
      throws_invalid([&] { attn::cached_attention(q, k, v, narrow, {.heads = 4, .kv_heads = 2}); },
                     {fn, "key width 4"}));
  attn::Options bad = o;
  bad.alibi_slopes = {1.0};
  EXPECT_TRUE(
      throws_invalid([&] { attn::cached_attention(q, k, v, cache, bad); }, {fn, "alibi_slopes"}));
  EXPECT_EQ(cache.position(), 0);
  EXPECT_EQ(narrow.position(), 0);
}

}  // namespace
