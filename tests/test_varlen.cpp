// Packed batches of sequences of different lengths against the long-double reference, sequence by
// sequence, and against the same sequences attended one call at a time.
#include <attn/varlen.hpp>

#include "support.hpp"

namespace {

using namespace attn_test;

template <class T>
class Varlen : public ::testing::Test {};
TYPED_TEST_SUITE(Varlen, Scalars);

std::vector<Index> offsets_of(const std::vector<Index>& lengths) {
  std::vector<Index> o{0};
  for (Index n : lengths) o.push_back(o.back() + n);
  return o;
}

// Checks varlen_attention_with_lse on every sequence against the reference.
template <class T>
void expect_matches_reference(const std::vector<Index>& len_q, const std::vector<Index>& len_k,
                              attn::Options o, int heads, int kv_heads, Index d_k, Index d_v,
                              RefMask m) {
  const auto oq = offsets_of(len_q), ok = offsets_of(len_k);
  const Mat<T> q = normal<T>(oq.back(), heads * d_k, 1),
               k = normal<T>(ok.back(), kv_heads * d_k, 2),
               v = normal<T>(ok.back(), kv_heads * d_v, 3);
  o.heads = heads;
  o.kv_heads = kv_heads;
  const auto got = attn::varlen_attention_with_lse(q, k, v, oq, ok, o);
  for (std::size_t s = 0; s < len_q.size(); ++s) {
    const Reference ref = reference_heads(
        to_real(q.middleRows(oq[s], len_q[s])), to_real(k.middleRows(ok[s], len_k[s])),
        to_real(v.middleRows(ok[s], len_k[s])), heads, kv_heads, 1 / std::sqrt(Real(d_k)), m);
    EXPECT_TRUE(output_near<T>(got.output.middleRows(oq[s], len_q[s]), ref)) << "sequence " << s;
    EXPECT_TRUE(lse_near<T>(got.lse.middleRows(oq[s], len_q[s]), ref.lse)) << "sequence " << s;
  }
}

TYPED_TEST(Varlen, EverySequenceMatchesTheReference) {
  using T = TypeParam;
  const std::vector<Index> lengths{50, 1, 0, 97, 3, 200};
  RefMask causal;
  causal.causal = true;
  expect_matches_reference<T>(lengths, lengths, {}, 4, 2, 16, 8, {});
  expect_matches_reference<T>(lengths, lengths, {.causal = true}, 4, 2, 16, 8, causal);
  // Cross-attention with other key lengths per sequence, causal aligned per sequence (bottom
  // right), including queries with no key at all.
  expect_matches_reference<T>(lengths, {20, 9, 5, 300, 0, 100}, {.causal = true}, 2, 1, 8, 8,
                              causal);
}

TYPED_TEST(Varlen, ScoreRulesApplyPerSequence) {
  using T = TypeParam;
  attn::Options o{.causal = true, .window = {9, attn::Window::unbounded}, .softcap = 2};
  o.alibi_slopes = {0.5, 0.125};
  o.sinks = {1.0, -0.5};
  RefMask m;
  m.causal = true;
  m.left = 9;
  m.softcap = 2;
  m.alibi = o.alibi_slopes;
  m.sinks = o.sinks;
  expect_matches_reference<T>({70, 2, 130}, {70, 2, 130}, o, 2, 2, 8, 8, m);
}

TYPED_TEST(Varlen, EqualsOneCallPerSequenceForEveryThreadCount) {
  using T = TypeParam;
  const auto offsets = offsets_of({120, 7, 300, 64});
  const Mat<T> q = normal<T>(offsets.back(), 4 * 32, 4), k = normal<T>(offsets.back(), 32, 5),
               v = normal<T>(offsets.back(), 32, 6);
  const attn::Options base{.causal = true, .heads = 4, .kv_heads = 1, .threads = 1};
  const Mat<T> packed = attn::varlen_attention(q, k, v, offsets, offsets, base);
  for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
    const Index b = offsets[s], n = offsets[s + 1] - b;
    const Mat<T> one = attn::scaled_dot_product_attention(q.middleRows(b, n), k.middleRows(b, n),
                                                          v.middleRows(b, n), base);
    // Sequences of prefill size run the same kernel and tiles as a call of their own.
    EXPECT_EQ(packed.middleRows(b, n), one) << "sequence " << s;
  }
  for (const int threads : {2, 3, 5}) {
    attn::Options o = base;
    o.threads = threads;
    EXPECT_EQ(attn::varlen_attention(q, k, v, offsets, offsets, o), packed) << threads;
  }
}

TYPED_TEST(Varlen, RejectsBadOffsets) {
  using T = TypeParam;
  const Mat<T> q(10, 8), k(10, 8), v(10, 8);
  const char* fn = "attn::varlen_attention";
  const auto call = [&](std::vector<Index> oq, std::vector<Index> ok) {
    return [&, oq, ok] { attn::varlen_attention(q, k, v, oq, ok); };
  };
  EXPECT_TRUE(throws_invalid(call({0, 4, 9}, {0, 4, 10}), {fn, "offsets of Q", "10"}));
  EXPECT_TRUE(throws_invalid(call({}, {0, 10}), {fn, "offsets of Q", "0 offsets"}));
  EXPECT_TRUE(throws_invalid(call({0, 6, 4, 10}, {0, 2, 4, 10}), {fn, "decrease", "6 then 4"}));
  EXPECT_TRUE(throws_invalid(call({0, 10}, {0, 5, 10}), {fn, "1 query sequences but 2 key"}));
  EXPECT_TRUE(throws_invalid(call({0, 10}, {1, 10}), {fn, "offsets of K and V"}));
}

}  // namespace
