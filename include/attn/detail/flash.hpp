// attn/detail/flash.hpp: the fused attention kernels. The n_q x n_k scores are never formed.
//
// Prefill (many queries): a tile of BlockQ queries of one head runs over tiles of BlockK keys of
// its key/value head with an online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao 2022).
// For each key tile:
//   S   = (scale Q_tile) K_tile^T                       register-blocked, key-major, in L1
//   S  <- cap tanh(S / cap) - slope |p_i - j|       soft-capping and ALiBi, when asked for
//   S  <- S masked (the causal / window band from indices, boolean or additive mask by tile)
//   m' = max(m, rowmax S),  P = exp(S - m'),  alpha = exp(m - m'),  l <- alpha l + rowsum P
//   acc <- alpha acc + P V_tile                          register-blocked, rescale folded in
// and at the end O = acc / l, lse = m + log l; a sink starts the softmax at m = sink, l = 1. Extra
// memory per thread is O(Tiles BlockQ (d_k + d_v) + BlockK (BlockQ + d_k + d_v)), whatever n is.
// Key tiles outside a query tile's band (causal, sliding window) are skipped, and on the band's
// edges the micro-tiles that lie wholly outside it are neither computed nor multiplied.
//
// Decode (a few queries): memory-bound, so the keys are cut into fixed chunks of DecodeChunk; each
// chunk computes the partial (m, l, acc) of every query row of every head with each K and V row
// read once, and the partial states are merged in chunk order with the associative rule. The
// chunking does not depend on the thread count, so neither do the results.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "attn/common.hpp"
#include "attn/detail/heads.hpp"
#include "attn/detail/packet.hpp"
#include "attn/detail/parallel.hpp"
#include "attn/online_softmax.hpp"

namespace attn::detail {

template <class T>
using AlignedBuffer = std::vector<T, Eigen::aligned_allocator<T>>;

// One attention call, as raw row-major storage: row i of Q at q + i * ldq, and so on.
template <class T>
struct FlashProblem {
  HeadLayout l;
  const T* q;
  Index ldq;
  const T* k;
  Index ldk;
  const T* v;
  Index ldv;
  T* o;  // n_q x (heads·d_v)
  Index ldo;
  T* lse;  // n_q x heads, or null
  Index ldl;
  ScoreRules rules;  // scale, band, soft-capping, ALiBi, sinks: validated by the entry point
  int threads;
};

// Soft-capping and ALiBi on the rows x keys scores of head h at s, s(i, j) = s[j * lds + i]
// (key-major) for queries i0 + i and keys j0 + j. What lies outside the band is overwritten with
// -inf afterwards, so it may be transformed too.
template <class T>
void transform_scores(const ScoreRules& rules, Index h, T* s, Index lds, Index rows, Index i0,
                      Index j0, Index keys) {
  if (!rules.transforms()) return;
  using Col = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>> st(
      s, rows, keys, Eigen::OuterStride<>(lds));
  if (rules.softcap != 0) {
    const T cap = static_cast<T>(rules.softcap);
    st = cap * (st * (T(1) / cap)).tanh();
  }
  if (rules.alibi) {
    const T slope = static_cast<T>(rules.alibi[h]);
    for (Index j = 0; j < keys; ++j) {
      // p_i - j for the tile's rows: whole numbers, exact in T for any realistic length.
      const T d0 = static_cast<T>(i0 + rules.band.offset - (j0 + j));
      st.col(j) -= slope * Col::LinSpaced(rows, d0, d0 + static_cast<T>(rows - 1)).abs();
    }
  }
}

// s(i, j) <- -inf for the keys j0 + j (j < keys) outside the band of query i0 + i, for the rows
// at s, key-major (s(i, j) = s[j * lds + i]): a prefix and a suffix of each row.
template <class T>
void mask_outside_band(const KeyBand& band, T* s, Index lds, Index i0, Index rows, Index j0,
                       Index keys) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < rows; ++i) {
    const Index b = std::clamp<Index>(band.begin(i0 + i) - j0, 0, keys);
    const Index e = std::clamp<Index>(band.end(i0 + i) - j0, b, keys);
    for (Index j = 0; j < b; ++j) s[j * lds + i] = neg_inf;
    for (Index j = e; j < keys; ++j) s[j * lds + i] = neg_inf;
  }
}

// No mask beyond the band.
struct NoScoreMask {
  template <class T>
  void tile(T*, Index, Index, Index, Index, Index) const {}
};

// A boolean (true = may attend) or additive n_q x n_k mask, read a tile at a time.
template <class DM>
struct ScoreMask {
  const DM& mask;
  static constexpr bool boolean = std::is_same_v<typename DM::Scalar, bool>;

  template <class T>
  static void apply(T& s, const typename DM::Scalar& m) {
    if constexpr (boolean) {
      if (!m) s = -std::numeric_limits<T>::infinity();
    } else {
      s += m;
    }
  }
  // Key-major tile: s_ij at st[j * lds + i], for rows i0.. and keys j0..
  template <class T>
  void tile(T* st, Index lds, Index i0, Index rows, Index j0, Index keys) const {
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < keys; ++j) apply(st[j * lds + i], mask.coeff(i0 + i, j0 + j));
  }
};

// The state of one query tile: its queries, its online softmax and its output accumulator.
template <class T, int BlockQ>
struct QueryTile {
  AlignedBuffer<T> qt;   // d_k x BlockQ: the tile's queries, scaled and transposed
  AlignedBuffer<T> acc;  // BlockQ x lda: the unnormalised output
  OnlineSoftmax<T, BlockQ> softmax;
  Eigen::Array<T, BlockQ, 1> alpha;
  Index i0 = 0, rows = 0, padded = 0, k_begin = 0, k_end = 0;
};

template <class T, int BlockQ, int BlockK, int Tiles>
struct FlashWorkspace {
  Index lda;            // d_v rounded up to whole packets
  AlignedBuffer<T> st;  // BlockK x BlockQ: scores, then weights, key-major
  AlignedBuffer<T> kv;  // BlockK x (d_k + d_v): the key/value tile, packed
  QueryTile<T, BlockQ> tiles[Tiles];

  FlashWorkspace(Index d_k, Index d_v)
      : lda((d_v + packet_size<T> - 1) / packet_size<T> * packet_size<T>),
        st(Index(BlockK) * BlockQ, T(0)),
        kv(Index(BlockK) * (d_k + d_v)) {
    for (auto& t : tiles) {
      t.qt.resize(d_k * BlockQ);
      t.acc.resize(BlockQ * lda);
    }
  }
};

// Starts query tile `t` of head h at row i0: packs (scale Q_tile)^T, with the rows past the tile
// zero so that their scores stay finite, and resets the softmax (to head h's sink, if any) and the
// accumulator.
template <int BlockQ, class T>
void start_tile(const FlashProblem<T>& p, Index h, Index i0, Index lda, QueryTile<T, BlockQ>& t) {
  constexpr int W2 = 2 * packet_size<T>;
  t.i0 = i0;
  t.rows = std::min<Index>(BlockQ, p.l.n_q - i0);
  t.padded = (t.rows + W2 - 1) / W2 * W2;
  // Keys outside the band of every query of the tile are skipped outright.
  const KeyBand& band = p.rules.band;
  t.k_begin = band.begin(i0);
  t.k_end = std::max(t.k_begin, band.end(i0 + t.rows - 1));
  // Row by row: the reads stream, the strided writes land in L1.
  const T scale = static_cast<T>(p.rules.scale);
  for (Index i = 0; i < t.rows; ++i) {
    const T* q = p.q + (i0 + i) * p.ldq + h * p.l.d_k;
    for (Index c = 0; c < p.l.d_k; ++c) t.qt[c * BlockQ + i] = scale * q[c];
  }
  for (Index c = 0; c < p.l.d_k; ++c)
    std::fill(t.qt.data() + c * BlockQ + t.rows, t.qt.data() + c * BlockQ + t.padded, T(0));
  t.softmax = OnlineSoftmax<T, BlockQ>();
  if (p.rules.sinks) t.softmax.absorb_sink(static_cast<T>(p.rules.sinks[h]), t.alpha);
  std::fill(t.acc.begin(), t.acc.begin() + t.rows * lda, T(0));
}

// acc <- alpha acc + P V for the Rows rows of tile t from row r, over the keys [b, e) of the tile
// that some row of the block may attend (the weights of the others are 0).
template <int Rows, int BlockQ, class T>
void pv_block(const FlashProblem<T>& p, const T* st, const T* vt, QueryTile<T, BlockQ>& t, Index r,
              Index lda, Index b, Index e) {
  pv_rows<Rows>(st + b * BlockQ + r, BlockQ, vt + b * p.l.d_v, p.l.d_v, std::max<Index>(0, e - b),
                p.l.d_v, t.alpha.data() + r, t.acc.data() + r * lda, lda);
}

// One query tile of head h against the packed key tile kt / value tile vt of keys [j0, j0 + kn):
// scores, soft-capping and ALiBi, masks, the online softmax and the weighted values.
template <int BlockQ, class T, class Mask>
void absorb_key_tile(const FlashProblem<T>& p, const Mask& mask, Index h, Index j0, Index kn,
                     const T* kt, const T* vt, T* st, Index lda, QueryTile<T, BlockQ>& t) {
  constexpr int W2 = 2 * packet_size<T>;
  const Index d_k = p.l.d_k, qn = t.rows;
  const KeyBand& band = p.rules.band;
  // The band of the tile's row i, in this tile's key coordinates: keys [begin(i), end(i)).
  auto begin = [&](Index i) { return std::clamp<Index>(band.begin(t.i0 + i) - j0, 0, kn); };
  auto end = [&](Index i) { return std::clamp<Index>(band.end(t.i0 + i) - j0, 0, kn); };
  const bool banded = !band.full();

  // Micro-tiles that lie wholly outside the band of all their rows are not computed.
  for (Index ib = 0; ib < t.padded; ib += W2) {
    const Index last = std::min(ib + W2, qn) - 1;
    const Index b = banded ? begin(ib) : 0, e = banded ? std::max(b, end(last)) : kn;
    qk_strip(t.qt.data() + ib, BlockQ, kt + b * d_k, d_k, d_k, e - b, st + b * BlockQ + ib, BlockQ);
  }
  transform_scores(p.rules, h, st, BlockQ, t.padded, t.i0, j0, kn);
  // Each row's keys outside its band, computed or not.
  if (banded) mask_outside_band(band, st, BlockQ, t.i0, qn, j0, kn);
  mask.tile(st, BlockQ, t.i0, qn, j0, kn);

  t.softmax.absorb_key_major(st, kn, BlockQ, t.alpha.data(), t.padded);

  // Rows in sixes (the P V micro-tile), each block only over the keys its rows may attend.
  for_row_blocks<6>(qn, [&](auto rows, Index r) {
    const Index b = banded ? begin(r) : 0, e = banded ? end(r + rows - 1) : kn;
    pv_block<decltype(rows)::value>(p, st, vt, t, r, lda, b, e);
  });
}

// O = acc / l and lse = m + log l for the tile's rows of head h.
template <int BlockQ, class T>
void finish_tile(const FlashProblem<T>& p, Index h, Index lda, QueryTile<T, BlockQ>& t) {
  const Index d_v = p.l.d_v;
  Eigen::Map<Matrix<T>> acc(t.acc.data(), BlockQ, lda);
  t.softmax.finalize(acc);  // rows past t.rows hold stale values; they are not copied out
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> out(p.o + t.i0 * p.ldo + h * d_v, t.rows, d_v,
                                                     Eigen::OuterStride<>(p.ldo));
  out = acc.topLeftCorner(t.rows, d_v);
  if (p.lse) {
    const auto lse = t.softmax.log_sum_exp();
    for (Index i = 0; i < t.rows; ++i) p.lse[(t.i0 + i) * p.ldl + h] = lse(i);
  }
}

// Head h, query rows [i0, i0 + Tiles·BlockQ): each key/value tile is packed once, contiguous,
// and then serves Tiles query tiles while it is hot in L2. Packing also matters for its own sake:
// with several heads a row of K or V holds them all, so a head's rows lie kilobytes apart and
// would fall into the same few L1 sets.
template <int BlockQ, int BlockK, int Tiles, class T, class Mask>
void flash_rows(const FlashProblem<T>& p, const Mask& mask, Index h, Index i0,
                FlashWorkspace<T, BlockQ, BlockK, Tiles>& ws) {
  const Index d_k = p.l.d_k, d_v = p.l.d_v, g = p.l.kv_head(h);
  int tiles = 0;
  Index k_begin = p.l.n_k, k_end = 0;
  for (; tiles < Tiles && i0 + tiles * BlockQ < p.l.n_q; ++tiles) {
    start_tile(p, h, i0 + tiles * BlockQ, ws.lda, ws.tiles[tiles]);
    k_begin = std::min(k_begin, ws.tiles[tiles].k_begin);
    k_end = std::max(k_end, ws.tiles[tiles].k_end);
  }
  T* kt = ws.kv.data();
  T* vt = kt + BlockK * d_k;
  for (Index j0 = k_begin; j0 < k_end; j0 += BlockK) {
    const Index kn = std::min<Index>(BlockK, k_end - j0);
    for (Index j = 0; j < kn; ++j) {
      std::copy_n(p.k + (j0 + j) * p.ldk + g * d_k, d_k, kt + j * d_k);
      std::copy_n(p.v + (j0 + j) * p.ldv + g * d_v, d_v, vt + j * d_v);
    }
    // The next tile's rows are scattered; ask for them now so that they arrive during this
    // tile's arithmetic instead of stalling the next copy.
    for (Index j = j0 + BlockK; j < std::min(j0 + 2 * BlockK, k_end); ++j) {
      prefetch_row(p.k + j * p.ldk + g * d_k, d_k);
      prefetch_row(p.v + j * p.ldv + g * d_v, d_v);
    }
    for (int s = 0; s < tiles; ++s) {
      QueryTile<T, BlockQ>& t = ws.tiles[s];
      if (j0 < t.k_end && j0 + kn > t.k_begin)
        absorb_key_tile(p, mask, h, j0, std::min(kn, t.k_end - j0), kt, vt, ws.st.data(), ws.lda,
                        t);
    }
  }
  for (int s = 0; s < tiles; ++s) finish_tile(p, h, ws.lda, ws.tiles[s]);
}

// Prefill: every (head, block of Tiles query tiles) pair is an independent work item.
template <int BlockQ, int BlockK, int Tiles, class T, class Mask>
void flash_attention(const FlashProblem<T>& p, const Mask& mask) {
  static_assert(BlockQ % (2 * packet_size<T>) == 0,
                "attn: BlockQ must be a multiple of two packets (the width of the QK micro-tile)");
  static_assert(BlockK >= 1 && Tiles >= 1, "attn: BlockK and Tiles must be positive");
  constexpr Index span = Index(BlockQ) * Tiles;
  const Index blocks = (p.l.n_q + span - 1) / span;
  parallel_for(
      p.l.heads * blocks, p.threads,
      [&] { return FlashWorkspace<T, BlockQ, BlockK, Tiles>(p.l.d_k, p.l.d_v); },
      [&](Index item, auto& ws) {
        // Causal blocks grow with i0; handing out the costly ones first balances the threads.
        const Index b =
            p.rules.band.right != Window::unbounded ? blocks - 1 - item % blocks : item % blocks;
        flash_rows<BlockQ, BlockK, Tiles>(p, mask, item / blocks, b * span, ws);
      });
}

// Decode: few queries, many keys. Row r = h·n_q + i is query i of head h, so the rows of the
// heads that share key/value head g are the contiguous block [g·R, (g+1)·R), R = group·n_q. One
// work item is one chunk of DecodeChunk keys for every head at once: its scores are computed
// key-major, a key/value head at a time with each K load serving the R rows of its group, and its
// weighted values by the P·V micro-kernel of the prefill in sub-blocks of 16 keys, whose V rows
// stay in cache across the heads. Each chunk keeps its own (m, l, acc); they are merged in chunk
// order.
template <int DecodeChunk, class T, class Mask>
void decode_attention(const FlashProblem<T>& p, const Mask& mask) {
  const HeadLayout& l = p.l;
  const Index rows = l.heads * l.n_q, group_rows = l.group() * l.n_q;
  // Chunks cover the union of the rows' bands, from its first key: a function of the inputs only.
  const KeyBand& band = p.rules.band;
  const Index k_begin = band.begin(0), k_end = std::max(k_begin, band.end(l.n_q - 1));
  const Index chunks = std::max<Index>(1, (k_end - k_begin + DecodeChunk - 1) / DecodeChunk);
  const Index d_k = l.d_k, d_v = l.d_v;
  const Index lda = (d_v + packet_size<T> - 1) / packet_size<T> * packet_size<T>;
  const T scale = static_cast<T>(p.rules.scale);

  // Per chunk: the (m, l) of every row and the unnormalised rows x lda accumulator.
  std::vector<OnlineSoftmax<T>> states(chunks, OnlineSoftmax<T>(rows));
  AlignedBuffer<T> partial(chunks * rows * lda, T(0));
  const AlignedBuffer<T> ones(rows, T(1));  // no rescale inside a chunk: it is absorbed at once

  struct Workspace {
    Matrix<T> q;         // rows x d_k, scaled
    AlignedBuffer<T> s;  // DecodeChunk x rows, key-major: scores, then weights
    typename OnlineSoftmax<T>::Column alpha;
  };
  parallel_for(
      chunks, p.threads,
      [&] {
        Workspace ws{Matrix<T>(rows, d_k), AlignedBuffer<T>(DecodeChunk * rows), {}};
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < d_k; ++c)
            ws.q(r, c) = scale * p.q[(r % l.n_q) * p.ldq + (r / l.n_q) * d_k + c];
        ws.alpha.resize(rows);
        return ws;
      },
      [&](Index chunk, Workspace& ws) {
        const Index j0 = k_begin + chunk * DecodeChunk;
        const Index kn = std::clamp<Index>(k_end - j0, 0, DecodeChunk);
        T* s = ws.s.data();
        // Sub-blocks of keys for all heads in turn: K and V are read row after row, in order,
        // and a sub-block's rows stay in cache while every head takes its part of them.
        constexpr Index sub = 16;
        for (Index j = 0; j < kn; j += sub)
          for (Index g = 0; g < l.kv_heads; ++g)
            for_row_blocks<4>(group_rows, [&](auto block, Index r) {
              const Index row = g * group_rows + r;
              dot_rows<decltype(block)::value>(ws.q.row(row).data(), d_k,
                                               p.k + (j0 + j) * p.ldk + g * d_k, p.ldk, d_k,
                                               std::min(sub, kn - j), s + j * rows + row, rows);
            });
        for (Index h = 0; h < l.heads; ++h) {
          T* sh = s + h * l.n_q;  // head h's n_q rows, key-major with stride `rows`
          transform_scores(p.rules, h, sh, rows, l.n_q, 0, j0, kn);
          mask_outside_band(band, sh, rows, 0, l.n_q, j0, kn);
          mask.tile(sh, rows, 0, l.n_q, j0, kn);
        }
        states[chunk].absorb_key_major(s, kn, rows, ws.alpha.data(), rows);
        T* acc = partial.data() + chunk * rows * lda;
        for (Index j = 0; j < kn; j += sub)
          for (Index g = 0; g < l.kv_heads; ++g)
            for_row_blocks<6>(group_rows, [&](auto block, Index r) {
              const Index row = g * group_rows + r;
              pv_rows<decltype(block)::value>(
                  s + j * rows + row, rows, p.v + (j0 + j) * p.ldv + g * d_v, p.ldv,
                  std::min(sub, kn - j), d_v, ones.data(), acc + row * lda, lda);
            });
      });

  // Merge the chunks in chunk order, add each head's sink, normalise.
  using Acc = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
  Acc acc(partial.data(), rows, d_v, Eigen::OuterStride<>(lda));
  OnlineSoftmax<T>& state = states[0];
  for (Index c = 1; c < chunks; ++c)
    state.merge(states[c], acc,
                Acc(partial.data() + c * rows * lda, rows, d_v, Eigen::OuterStride<>(lda)));
  if (p.rules.sinks) {
    typename OnlineSoftmax<T>::Column sink(rows), alpha;
    for (Index r = 0; r < rows; ++r) sink(r) = static_cast<T>(p.rules.sinks[r / l.n_q]);
    state.absorb_sinks(sink, alpha);
    OnlineSoftmax<T>::rescale(acc, alpha);
  }
  state.finalize(acc);
  const auto lse = state.log_sum_exp();
  for (Index r = 0; r < rows; ++r) {
    const Index h = r / l.n_q, i = r % l.n_q;
    std::copy_n(acc.row(r).data(), d_v, p.o + i * p.ldo + h * d_v);
    if (p.lse) p.lse[i * p.ldl + h] = lse(r);
  }
}

}  // namespace attn::detail
