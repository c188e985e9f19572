// attn/kv_cache.hpp: the keys and values a decoder has seen, kept for the tokens still to come.
//
// Storage is allocated once; append copies rows into it and never reallocates. A plain cache
// holds up to max_tokens tokens and refuses more. A windowed cache (StreamingLLM, Xiao et al.
// 2023; Mistral's rolling buffer) keeps the first `sink_tokens` tokens for ever and the last
// `window` in a ring, overwriting the oldest: the attention it serves is then the sliding-window
// rule, query p attending key j <= p iff j < sink_tokens or j > p - window.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/attention.hpp"
#include "attn/common.hpp"
#include "attn/detail/check.hpp"
#include "attn/detail/heads.hpp"

namespace attn {

// window = 0: a plain cache. window > 0: a ring of `window` tokens after `sink_tokens` kept ones.
struct CachePolicy {
  Index window = 0;
  Index sink_tokens = 0;
};

template <class T>
class KVCache {
  static_assert(std::is_floating_point_v<T>, "attn::KVCache: T must be float or double");

 public:
  using Scalar = T;

  // Rows of storage held in position order: rows [row, row + rows) of keys() and values() are the
  // tokens at positions [position, position + rows).
  struct Segment {
    Index row = 0, rows = 0, position = 0;
  };

  // k_cols, v_cols: the widths of a key and a value row (kv_heads·d_head each in a layer).
  // A windowed cache needs sink_tokens + window <= max_tokens and allocates exactly that many rows.
  KVCache(Index max_tokens, Index k_cols, Index v_cols, const CachePolicy& policy = {})
      : policy_(checked(max_tokens, k_cols, v_cols, policy)),
        capacity_(policy.window > 0 ? policy.sink_tokens + policy.window : max_tokens),
        keys_(capacity_, k_cols),
        values_(capacity_, v_cols) {}

  Index capacity() const noexcept { return capacity_; }                   // rows allocated
  Index size() const noexcept { return std::min(position_, capacity_); }  // tokens held
  // Tokens appended since construction or clear(): the position the next token will take.
  Index position() const noexcept { return position_; }
  bool windowed() const noexcept { return policy_.window > 0; }
  const CachePolicy& policy() const noexcept { return policy_; }
  Index key_cols() const noexcept { return keys_.cols(); }
  Index value_cols() const noexcept { return values_.cols(); }

  // The storage; in a plain cache row p is the token at position p. In a windowed one, see
  // segments().
  const Matrix<T>& keys() const noexcept { return keys_; }
  const Matrix<T>& values() const noexcept { return values_; }

  // The held tokens as at most three runs of storage, in position order: the sinks, then the ring
  // from its oldest token to the end of storage, then its wrapped part. A plain cache is one run.
  std::vector<Segment> segments() const {
    std::vector<Segment> s;
    if (!windowed()) {
      if (position_ > 0) s.push_back({0, position_, 0});
      return s;
    }
    const Index sinks = std::min(position_, policy_.sink_tokens);
    if (sinks > 0) s.push_back({0, sinks, 0});
    const Index first = std::max(policy_.sink_tokens, position_ - policy_.window);
    Index p = first;
    while (p < position_) {
      const Index row = ring_row(p), rows = std::min(position_ - p, capacity_ - row);
      s.push_back({row, rows, p});
      p += rows;
    }
    return s;
  }

  // Appends the n new tokens' keys (n x key_cols()) and values (n x value_cols()), at positions
  // position() .. position() + n - 1. A plain cache that cannot take them all throws and is left
  // as it was; a windowed one overwrites its oldest ring tokens.
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    static_assert(std::is_same_v<typename DK::Scalar, T> && std::is_same_v<typename DV::Scalar, T>,
                  "attn::KVCache::append: keys and values must have the cache's scalar type");
    using detail::shape;
    constexpr const char* fn = "KVCache::append";
    if (k.cols() != keys_.cols() || v.cols() != values_.cols() || k.rows() != v.rows())
      detail::fail(fn, "keys are " + shape(k) + " and values " + shape(v) +
                           "; the cache takes n x " + std::to_string(keys_.cols()) +
                           " keys and n x " + std::to_string(values_.cols()) + " values");
    const Index n = k.rows();
    if (!windowed() && position_ + n > capacity_)
      detail::fail(fn, "the cache holds " + std::to_string(position_) + " of max_tokens = " +
                           std::to_string(capacity_) + " tokens and cannot take " +
                           std::to_string(n) + " more (make a larger cache, or a windowed one)");
    // Of the new tokens only those that will still be held are written: the sinks among them and
    // the last `window` of the rest.
    const Index end = position_ + n;
    for (Index p = position_; p < end; ++p) {
      if (windowed() && p >= policy_.sink_tokens && p < end - policy_.window) continue;
      const Index row = windowed() && p >= policy_.sink_tokens ? ring_row(p) : p;
      keys_.row(row) = k.row(p - position_);
      values_.row(row) = v.row(p - position_);
    }
    position_ = end;
  }

  // Forgets every token; the storage stays.
  void clear() noexcept { position_ = 0; }

  // Forgets the tokens from position `tokens` on (0 <= tokens <= position()), as speculative
  // decoding does with rejected draft tokens. Plain caches only: a ring has already overwritten
  // the older tokens that the shortened sequence would see again.
  void truncate(Index tokens) {
    if (windowed())
      detail::fail("KVCache::truncate", "a windowed cache has overwritten what it would need");
    if (tokens < 0 || tokens > position_)
      detail::fail("KVCache::truncate", "tokens = " + std::to_string(tokens) +
                                            " but the cache holds " + std::to_string(position_));
    position_ = tokens;
  }

 private:
  static CachePolicy checked(Index max_tokens, Index k_cols, Index v_cols, const CachePolicy& p) {
    const std::string sizes = "max_tokens = " + std::to_string(max_tokens) + ", key width " +
                              std::to_string(k_cols) + ", value width " + std::to_string(v_cols);
    if (max_tokens < 0 || k_cols <= 0 || v_cols <= 0)
      detail::fail("KVCache", sizes + "; max_tokens must be >= 0 and the widths > 0");
    if (p.window < 0 || p.sink_tokens < 0 || (p.window == 0 && p.sink_tokens > 0))
      detail::fail("KVCache", "CachePolicy{window = " + std::to_string(p.window) +
                                  ", sink_tokens = " + std::to_string(p.sink_tokens) +
                                  "}; both must be >= 0, and sink tokens need a window");
    if (p.window > 0 && p.sink_tokens + p.window > max_tokens)
      detail::fail("KVCache", sizes + " cannot hold sink_tokens + window = " +
                                  std::to_string(p.sink_tokens + p.window) + " tokens");
    return p;
  }

  // The storage row of a position that is past the sinks.
  Index ring_row(Index p) const noexcept {
    return policy_.sink_tokens + (p - policy_.sink_tokens) % policy_.window;
  }

  CachePolicy policy_;
  Index capacity_;
  Matrix<T> keys_, values_;
  Index position_ = 0;
};

// Decoding step: the n new tokens at positions P = cache.position() .. P + n - 1 bring queries Q
// (n x heads·d_k) and their own keys and values (n x kv_heads·d_k, n x kv_heads·d_v). Each query
// attends, causally, every held key and the new keys up to its own position; then the new keys and
// values join the cache. Options are those of scaled_dot_product_attention, causal always on
// (bottom-right: a query's position is its token's). Fed a sequence token by token or in chunks,
// it gives the causal attention of the whole sequence; through a windowed cache, that of the
// sliding-window rule (key j visible to query p iff j <= p and (j < sink_tokens or
// j > p - window)), intersected with Options::window. Bad shapes or options throw before the cache
// changes; so does a plain cache that cannot take the new tokens.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> cached_attention(const Eigen::MatrixBase<DQ>& q,
                                             const Eigen::MatrixBase<DK>& k_new,
                                             const Eigen::MatrixBase<DV>& v_new,
                                             KVCache<typename DQ::Scalar>& cache,
                                             const Options& options = {}) {
  using T = typename DQ::Scalar;
  using detail::shape;
  constexpr const char* fn = "cached_attention";
  Options o = options;
  o.causal = true;
  auto l = detail::head_layout(fn, q, k_new, o);
  detail::add_values(fn, l, k_new, v_new);
  if (q.rows() != k_new.rows())
    detail::fail(fn, "Q is " + shape(q) + " and the new keys " + shape(k_new) +
                         "; every new token brings one query, one key and one value");
  if (k_new.cols() != cache.key_cols() || v_new.cols() != cache.value_cols())
    detail::fail(fn, "new keys " + shape(k_new) + " and values " + shape(v_new) +
                         " do not fit a cache of key width " + std::to_string(cache.key_cols()) +
                         " and value width " + std::to_string(cache.value_cols()));
  const detail::ScoreRules rules = detail::checked_rules(fn, o, l);

  if (!cache.windowed()) {
    // The new rows go in first, and then it is the causal prefill of the held sequence: the same
    // kernel, tiles and order as the full forward.
    cache.append(k_new, v_new);
    const Index held = cache.size();
    return scaled_dot_product_attention(q, cache.keys().topRows(held), cache.values().topRows(held),
                                        o);
  }

  // A ring's tokens lie in runs out of order, and the new tokens must be attended before they
  // overwrite the oldest (which the chunk's first queries may still see). So each run of keys, in
  // the cache or new, is attended on its own with its own band and the results are merged through
  // their log-sum-exp: no key is copied.
  const Index n = q.rows(), first = cache.position();
  const Index window = cache.policy().window, sinks = cache.policy().sink_tokens;
  const Matrix<T> kn = k_new, vn = v_new;
  struct Run {
    detail::RowMajorRef<T> k, v;
    Index position;
  };
  std::vector<Run> runs;
  for (const auto& s : cache.segments())
    runs.push_back({cache.keys().middleRows(s.row, s.rows),
                    cache.values().middleRows(s.row, s.rows), s.position});
  const Index new_sinks = std::clamp<Index>(sinks - first, 0, n);
  if (new_sinks > 0) runs.push_back({kn.topRows(new_sinks), vn.topRows(new_sinks), first});
  if (n > new_sinks)
    runs.push_back({kn.bottomRows(n - new_sinks), vn.bottomRows(n - new_sinks), first + new_sinks});

  const detail::RowMajorRef<T> qr(q);
  AttentionOutput<T> acc{Matrix<T>::Zero(n, l.heads * l.d_v),
                         Matrix<T>::Constant(n, l.heads, -std::numeric_limits<T>::infinity())};
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const Run& run = runs[r];
    detail::HeadLayout lr = l;
    lr.n_k = run.k.rows();
    detail::ScoreRules rr = rules;
    // Sinks are exempt from the ring's window; the rest see at most `window` keys back.
    Window w = o.window;
    if (run.position >= sinks)
      w.left = w.left == Window::unbounded ? window - 1 : std::min(w.left, window - 1);
    rr.band = detail::KeyBand::at(lr.n_k, first - run.position, true, w);
    if (r + 1 != runs.size()) rr.sinks = nullptr;  // a sink logit joins one denominator, once
    AttentionOutput<T> part;
    detail::fused<detail::DefaultTiles<T>::q, detail::DefaultTiles<T>::k,
                  detail::DefaultTiles<T>::group, T>(lr, qr, run.k, run.v, detail::NoScoreMask{},
                                                     rr, o.threads, part.output, &part.lse);
    detail::merge_into(acc, part);
  }
  cache.append(kn, vn);
  return acc.output;
}

}  // namespace attn
