// attn/detail/flash.hpp: the fused attention kernels. The n_q x n_k scores are never formed.
//
// Prefill (many queries): a tile of BlockQ queries of one head runs over tiles of BlockK keys of
// its key/value head with an online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao 2022).
// For each key tile:
//   S   = (scale Q_tile) K_tile^T                       register-blocked, key-major, in L1
//   S  <- S masked (causal from indices, boolean or additive mask read tile by tile)
//   m' = max(m, rowmax S),  P = exp(S - m'),  alpha = exp(m - m'),  l <- alpha l + rowsum P
//   acc <- alpha acc + P V_tile                          register-blocked, rescale folded in
// and at the end O = acc / l, lse = m + log l. Extra memory per thread is
// O(Tiles BlockQ (d_k + d_v) + BlockK (BlockQ + d_k + d_v)), whatever n is. Causal key tiles past a
// tile's last allowed key are skipped, and on the diagonal the micro-tiles that lie wholly above
// it are neither computed nor multiplied.
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
  T scale;
  bool causal;
  int threads;

  // Keys [0, causal_end(i)) are the ones query i may attend (all of them without causal).
  Index causal_end(Index i) const noexcept {
    return causal ? std::clamp<Index>(i + l.n_k - l.n_q + 1, 0, l.n_k) : l.n_k;
  }
};

// No mask beyond the causal one.
struct NoScoreMask {
  template <class T>
  void tile(T*, Index, Index, Index, Index, Index) const {}
  template <class T>
  void row(T*, Index, Index, Index) const {}
};

// A boolean (true = may attend) or additive n_q x n_k mask, read a tile or a row at a time.
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
  template <class T>
  void row(T* s, Index i, Index j0, Index keys) const {
    for (Index j = 0; j < keys; ++j) apply(s[j], mask.coeff(i, j0 + j));
  }
};

// The state of one query tile: its queries, its online softmax and its output accumulator.
template <class T, int BlockQ>
struct QueryTile {
  AlignedBuffer<T> qt;   // d_k x BlockQ: the tile's queries, scaled and transposed
  AlignedBuffer<T> acc;  // BlockQ x lda: the unnormalised output
  OnlineSoftmax<T, BlockQ> softmax;
  Eigen::Array<T, BlockQ, 1> alpha;
  Index i0 = 0, rows = 0, padded = 0, k_end = 0;
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
// zero so that their scores stay finite, and resets the softmax and the accumulator.
template <int BlockQ, class T>
void start_tile(const FlashProblem<T>& p, Index h, Index i0, Index lda, QueryTile<T, BlockQ>& t) {
  constexpr int W2 = 2 * packet_size<T>;
  t.i0 = i0;
  t.rows = std::min<Index>(BlockQ, p.l.n_q - i0);
  t.padded = (t.rows + W2 - 1) / W2 * W2;
  // Keys past the last one the tile's last query may attend are skipped outright.
  t.k_end = p.causal_end(i0 + t.rows - 1);
  // Row by row: the reads stream, the strided writes land in L1.
  for (Index i = 0; i < t.rows; ++i) {
    const T* q = p.q + (i0 + i) * p.ldq + h * p.l.d_k;
    for (Index c = 0; c < p.l.d_k; ++c) t.qt[c * BlockQ + i] = p.scale * q[c];
  }
  for (Index c = 0; c < p.l.d_k; ++c)
    std::fill(t.qt.data() + c * BlockQ + t.rows, t.qt.data() + c * BlockQ + t.padded, T(0));
  t.softmax = OnlineSoftmax<T, BlockQ>();
  std::fill(t.acc.begin(), t.acc.begin() + t.rows * lda, T(0));
}

// acc <- alpha acc + P V for the Rows rows of tile t from row r, over the keys [0, keys) that the
// block's last row may attend under causal (all kn otherwise).
template <int Rows, int BlockQ, class T>
void pv_block(const FlashProblem<T>& p, const T* st, const T* vt, Index kn, QueryTile<T, BlockQ>& t,
              Index r, Index lda, Index causal_keys) {
  pv_rows<Rows>(st + r, BlockQ, vt, p.l.d_v, p.causal ? causal_keys : kn, p.l.d_v,
                t.alpha.data() + r, t.acc.data() + r * lda, lda);
}

// One query tile against the packed key tile kt / value tile vt of keys [j0, j0 + kn):
// scores, masks, the online softmax and the weighted values.
template <int BlockQ, class T, class Mask>
void absorb_key_tile(const FlashProblem<T>& p, const Mask& mask, Index j0, Index kn, const T* kt,
                     const T* vt, T* st, Index lda, QueryTile<T, BlockQ>& t) {
  constexpr int W2 = 2 * packet_size<T>;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index d_k = p.l.d_k, qn = t.rows;
  // Keys [0, end) of this tile, as seen by the tile's row i.
  auto end = [&](Index i) { return std::clamp<Index>(p.causal_end(t.i0 + i) - j0, 0, kn); };

  for (Index ib = 0; ib < t.padded; ib += W2) {
    // Micro-tiles above the diagonal for all of these rows are not computed, only set to -inf.
    const Index keys = p.causal ? end(std::min(ib + W2, qn) - 1) : kn;
    qk_strip(t.qt.data() + ib, BlockQ, kt, d_k, d_k, keys, st + ib, BlockQ);
    for (Index j = keys; j < kn; ++j) std::fill_n(st + j * BlockQ + ib, W2, neg_inf);
  }
  if (p.causal && end(0) < kn)  // a diagonal tile: the rest of the upper triangle
    for (Index i = 0; i < qn; ++i)
      for (Index j = end(i); j < kn; ++j) st[j * BlockQ + i] = neg_inf;
  mask.tile(st, BlockQ, t.i0, qn, j0, kn);

  t.softmax.absorb_key_major(st, kn, BlockQ, t.alpha.data(), t.padded);

  // Rows in sixes (the P V micro-tile), each block only over the keys its last row may attend.
  Index r = 0;
  for (; r + 6 <= qn; r += 6) pv_block<6>(p, st, vt, kn, t, r, lda, end(r + 5));
  switch (qn - r) {
    case 5:
      pv_block<5>(p, st, vt, kn, t, r, lda, end(r + 4));
      break;
    case 4:
      pv_block<4>(p, st, vt, kn, t, r, lda, end(r + 3));
      break;
    case 3:
      pv_block<3>(p, st, vt, kn, t, r, lda, end(r + 2));
      break;
    case 2:
      pv_block<2>(p, st, vt, kn, t, r, lda, end(r + 1));
      break;
    case 1:
      pv_block<1>(p, st, vt, kn, t, r, lda, end(r));
      break;
    default:
      break;
  }
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
  Index k_end = 0;
  for (; tiles < Tiles && i0 + tiles * BlockQ < p.l.n_q; ++tiles) {
    start_tile(p, h, i0 + tiles * BlockQ, ws.lda, ws.tiles[tiles]);
    k_end = std::max(k_end, ws.tiles[tiles].k_end);
  }
  T* kt = ws.kv.data();
  T* vt = kt + BlockK * d_k;
  for (Index j0 = 0; j0 < k_end; j0 += BlockK) {
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
      if (j0 < t.k_end)
        absorb_key_tile(p, mask, j0, std::min(kn, t.k_end - j0), kt, vt, ws.st.data(), ws.lda, t);
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
        const Index b = p.causal ? blocks - 1 - item % blocks : item % blocks;
        flash_rows<BlockQ, BlockK, Tiles>(p, mask, item / blocks, b * span, ws);
      });
}

// Decode: few queries, many keys. Row r = h·n_q + i is query i of head h. One work item is one
// chunk of DecodeChunk keys for every head at once, so each K and V row is read whole and in
// order (a row holds all the heads), the access pattern the hardware prefetcher streams best;
// per-head passes would instead jump (heads·d) values from row to row.
template <int DecodeChunk, class T, class Mask>
void decode_attention(const FlashProblem<T>& p, const Mask& mask) {
  const HeadLayout& l = p.l;
  const Index rows = l.heads * l.n_q;
  const Index k_end = p.causal_end(l.n_q - 1);
  const Index chunks = std::max<Index>(1, (k_end + DecodeChunk - 1) / DecodeChunk);
  const Index d_k = l.d_k, d_v = l.d_v;

  // Partial states, chunk-major: per chunk `rows` states and a rows x d_v accumulator.
  std::vector<OnlineSoftmax<T, 1>> states(chunks * rows);
  Matrix<T> partial = Matrix<T>::Zero(chunks * rows, d_v);

  struct Workspace {
    Matrix<T> q;  // rows x d_k, scaled
    Matrix<T> s;  // rows x DecodeChunk: scores, then weights
  };
  parallel_for(
      chunks, p.threads,
      [&] {
        Workspace ws{Matrix<T>(rows, d_k), Matrix<T>(rows, DecodeChunk)};
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < d_k; ++c)
            ws.q(r, c) = p.scale * p.q[(r % l.n_q) * p.ldq + (r / l.n_q) * d_k + c];
        return ws;
      },
      [&](Index chunk, Workspace& ws) {
        const Index j0 = chunk * DecodeChunk;
        const Index kn = std::clamp<Index>(k_end - j0, 0, DecodeChunk);
        auto keys = [&](Index r) { return std::clamp<Index>(p.causal_end(r % l.n_q) - j0, 0, kn); };
        // s_rj = q_r . k_j: four keys at a time for every row, rows of a head together.
        Index j = 0;
        for (; j + 4 <= kn; j += 4)
          for (Index r = 0; r < rows; ++r)
            dot4(ws.q.row(r).data(), p.k + (j0 + j) * p.ldk + l.kv_head(r / l.n_q) * d_k, p.ldk,
                 d_k, ws.s.row(r).data() + j);
        for (; j < kn; ++j)
          for (Index r = 0; r < rows; ++r)
            ws.s(r, j) =
                dot(ws.q.row(r).data(), p.k + (j0 + j) * p.ldk + l.kv_head(r / l.n_q) * d_k, d_k);
        for (Index r = 0; r < rows; ++r) {
          T* s = ws.s.row(r).data();
          std::fill(s + keys(r), s + kn, -std::numeric_limits<T>::infinity());
          mask.row(s, r % l.n_q, j0, kn);
          typename OnlineSoftmax<T, 1>::Column alpha;
          states[chunk * rows + r].absorb(Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(s, kn),
                                          alpha);
        }
        // acc_r = sum_j p_rj v_j, again a whole row of V at a time.
        for (j = 0; j < kn; ++j) {
          const T* vj = p.v + (j0 + j) * p.ldv;
          for (Index r = 0; r < rows; ++r) {
            const T w = ws.s(r, j);
            if (w != T(0))
              axpy(w, vj + l.kv_head(r / l.n_q) * d_v, partial.row(chunk * rows + r).data(), d_v);
          }
        }
      });

  // Merge the chunks of each row in chunk order, then normalise.
  parallel_for(
      rows, p.threads, [] { return 0; },
      [&](Index r, int&) {
        const Index h = r / l.n_q, i = r % l.n_q;
        OnlineSoftmax<T, 1> state = states[r];
        auto acc = partial.row(r);
        for (Index c = 1; c < chunks; ++c)
          state.merge(states[c * rows + r], acc, partial.row(c * rows + r));
        state.finalize(acc);
        Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(p.o + i * p.ldo + h * d_v, d_v) = acc;
        if (p.lse) p.lse[i * p.ldl + h] = state.log_sum_exp()(0);
      });
}

}  // namespace attn::detail
