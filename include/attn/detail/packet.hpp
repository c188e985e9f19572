// attn/detail/packet.hpp: the register-blocked micro-kernels of the fused attention kernel.
//
// They are written once over Eigen's packet primitives (pmadd, pset1, ploadu...), so the same code
// runs 8-wide floats under AVX2, 4-wide doubles, 4-wide floats under plain SSE2 or NEON, and
// scalars when Eigen does not vectorise. Q·K^T keeps 2 packets of queries x 6 keys, P·V 6 rows x
// 2 packets of columns, in registers (12 accumulators out of 16 vector registers) and streams the
// operands past them, so each fused multiply-add is fed by less than one load: the shape of a
// GEMM micro-kernel.
#pragma once

#include <Eigen/Core>
#include <limits>
#include <type_traits>

#include "attn/common.hpp"

#if defined(__GNUC__) || defined(__clang__)
#define ATTN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ATTN_ALWAYS_INLINE inline
#endif

namespace attn::detail {

namespace ei = Eigen::internal;

template <class T>
using Packet = typename ei::packet_traits<T>::type;

template <class T>
inline constexpr int packet_size = ei::unpacket_traits<Packet<T>>::size;

// Asks the cache for the n values at x, a line at a time; a hint, without effect on results.
template <class T>
ATTN_ALWAYS_INLINE void prefetch_row(const T* x, Index n) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr Index line = 64 / sizeof(T);
  for (Index c = 0; c < n; c += line) __builtin_prefetch(x + c);
#else
  (void)x;
  (void)n;
#endif
}

// Scores of a tile, key-major: st[j * lds + i] = sum_c qt[c * ldq + i] * k[j * ldk + c] for
// Keys keys and the 2 packets of queries at qt (qt holds the scaled queries transposed).
// Queries run along the vector lanes, so the softmax that follows needs no horizontal reductions.
template <int Keys, class T>
ATTN_ALWAYS_INLINE void qk_micro(const T* qt, Index ldq, const T* k, Index ldk, Index d, T* st,
                                 Index lds) {
  using P = Packet<T>;
  constexpr int W = packet_size<T>;
  P acc[Keys][2];
  for (int r = 0; r < Keys; ++r) acc[r][0] = acc[r][1] = ei::pset1<P>(T(0));
  for (Index c = 0; c < d; ++c) {
    const P q0 = ei::pload<P>(qt + c * ldq);
    const P q1 = ei::pload<P>(qt + c * ldq + W);
    for (int r = 0; r < Keys; ++r) {
      const P kr = ei::pset1<P>(k[r * ldk + c]);
      acc[r][0] = ei::pmadd(q0, kr, acc[r][0]);
      acc[r][1] = ei::pmadd(q1, kr, acc[r][1]);
    }
  }
  for (int r = 0; r < Keys; ++r) {
    ei::pstore(st + r * lds, acc[r][0]);
    ei::pstore(st + r * lds + W, acc[r][1]);
  }
}

// The keys of one tile in blocks of 6, then the remainder, for 2 packets of queries.
template <class T>
void qk_strip(const T* qt, Index ldq, const T* k, Index ldk, Index d, Index keys, T* st,
              Index lds) {
  constexpr int Kr = 6;
  Index j = 0;
  for (; j + Kr <= keys; j += Kr) qk_micro<Kr>(qt, ldq, k + j * ldk, ldk, d, st + j * lds, lds);
  const T* kj = k + j * ldk;
  T* sj = st + j * lds;
  switch (keys - j) {
    case 5:
      qk_micro<5>(qt, ldq, kj, ldk, d, sj, lds);
      break;
    case 4:
      qk_micro<4>(qt, ldq, kj, ldk, d, sj, lds);
      break;
    case 3:
      qk_micro<3>(qt, ldq, kj, ldk, d, sj, lds);
      break;
    case 2:
      qk_micro<2>(qt, ldq, kj, ldk, d, sj, lds);
      break;
    case 1:
      qk_micro<1>(qt, ldq, kj, ldk, d, sj, lds);
      break;
    default:
      break;
  }
}

// o[r][c] <- alpha_r o[r][c] + sum_{j < keys} pt[j * ldp + r] v[j * ldv + c] for Rows rows and
// Vecs packets of columns: the probability-weighted values, with the online-softmax rescale
// folded into the load of the accumulator.
template <int Rows, int Vecs, class T>
ATTN_ALWAYS_INLINE void pv_micro(const T* pt, Index ldp, const T* v, Index ldv, Index keys,
                                 const T* alpha, T* o, Index ldo) {
  using P = Packet<T>;
  constexpr int W = packet_size<T>;
  P acc[Rows][Vecs];
  for (int r = 0; r < Rows; ++r) {
    const P a = ei::pset1<P>(alpha[r]);
    for (int c = 0; c < Vecs; ++c) acc[r][c] = ei::pmul(a, ei::pload<P>(o + r * ldo + c * W));
  }
  for (Index j = 0; j < keys; ++j) {
    P vj[Vecs];
    for (int c = 0; c < Vecs; ++c) vj[c] = ei::ploadu<P>(v + j * ldv + c * W);
    for (int r = 0; r < Rows; ++r) {
      const P p = ei::pset1<P>(pt[j * ldp + r]);
      for (int c = 0; c < Vecs; ++c) acc[r][c] = ei::pmadd(p, vj[c], acc[r][c]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Vecs; ++c) ei::pstore(o + r * ldo + c * W, acc[r][c]);
}

// The same product for the columns past the last whole packet (d_v not a multiple of the packet
// size), one scalar at a time.
template <int Rows, class T>
void pv_scalar_tail(const T* pt, Index ldp, const T* v, Index ldv, Index keys, const T* alpha, T* o,
                    Index ldo, Index c0, Index c1) {
  for (int r = 0; r < Rows; ++r)
    for (Index c = c0; c < c1; ++c) {
      T acc = alpha[r] * o[r * ldo + c];
      for (Index j = 0; j < keys; ++j) acc += pt[j * ldp + r] * v[j * ldv + c];
      o[r * ldo + c] = acc;
    }
}

// All d_v columns of Rows rows: blocks of 2 packets, then a single packet, then scalars.
// (6 rows x 2 packets measured fastest here: 97 GFLOP/s in L1 against 70 for 3 x 4.)
template <int Rows, class T>
ATTN_ALWAYS_INLINE void pv_rows(const T* pt, Index ldp, const T* v, Index ldv, Index keys, Index dv,
                                const T* alpha, T* o, Index ldo) {
  constexpr int W = packet_size<T>;
  Index c = 0;
  for (; c + 2 * W <= dv; c += 2 * W)
    pv_micro<Rows, 2>(pt, ldp, v + c, ldv, keys, alpha, o + c, ldo);
  for (; c + W <= dv; c += W) pv_micro<Rows, 1>(pt, ldp, v + c, ldv, keys, alpha, o + c, ldo);
  if (c < dv) pv_scalar_tail<Rows>(pt, ldp, v, ldv, keys, alpha, o, ldo, c, dv);
}

// Decode scores, key-major: s[j * lds + r] = sum_c q[r * ldq + c] k[j * ldk + c] for Rows query
// rows and Keys keys. The rows are the query heads that share one key/value head, so each load of
// K feeds all of them (Rows·Keys accumulators along d, one horizontal sum each at the end).
template <int Rows, int Keys, class T>
ATTN_ALWAYS_INLINE void dot_tile(const T* q, Index ldq, const T* k, Index ldk, Index d, T* s,
                                 Index lds) {
  using P = Packet<T>;
  constexpr int W = packet_size<T>;
  P acc[Rows][Keys];
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < Keys; ++j) acc[r][j] = ei::pset1<P>(T(0));
  Index c = 0;
  for (; c + W <= d; c += W) {
    P kc[Keys];
    for (int j = 0; j < Keys; ++j) kc[j] = ei::ploadu<P>(k + j * ldk + c);
    for (int r = 0; r < Rows; ++r) {
      const P qc = ei::ploadu<P>(q + r * ldq + c);
      for (int j = 0; j < Keys; ++j) acc[r][j] = ei::pmadd(qc, kc[j], acc[r][j]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < Keys; ++j) {
      T sum = ei::predux(acc[r][j]);
      for (Index t = c; t < d; ++t) sum += q[r * ldq + t] * k[j * ldk + t];
      s[j * lds + r] = sum;
    }
}

// dot_tile over `keys` keys (in threes, then the rest) for Rows rows.
template <int Rows, class T>
void dot_rows(const T* q, Index ldq, const T* k, Index ldk, Index d, Index keys, T* s, Index lds) {
  Index j = 0;
  for (; j + 3 <= keys; j += 3) dot_tile<Rows, 3>(q, ldq, k + j * ldk, ldk, d, s + j * lds, lds);
  if (keys - j == 2) dot_tile<Rows, 2>(q, ldq, k + j * ldk, ldk, d, s + j * lds, lds);
  if (keys - j == 1) dot_tile<Rows, 1>(q, ldq, k + j * ldk, ldk, d, s + j * lds, lds);
}

// The last block of for_row_blocks: f(integral_constant<int, n>, r) for the n < N + 1 rows left.
template <int N, class F>
ATTN_ALWAYS_INLINE void row_remainder(Index n, Index r, F& f) {
  if constexpr (N >= 1) {
    if (n == N)
      f(std::integral_constant<int, N>{}, r);
    else
      row_remainder<N - 1>(n, r, f);
  }
}

// f(std::integral_constant<int, R>{}, r) for consecutive blocks [r, r + R) covering [0, rows):
// blocks of Max rows, then one of the remainder, each with its size known at compile time (the
// micro-kernels' register blocks).
template <int Max, class F>
ATTN_ALWAYS_INLINE void for_row_blocks(Index rows, F&& f) {
  Index r = 0;
  for (; r + Max <= rows; r += Max) f(std::integral_constant<int, Max>{}, r);
  row_remainder<Max - 1>(rows - r, r, f);
}

}  // namespace attn::detail
