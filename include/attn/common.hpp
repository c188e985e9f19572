// attn/common.hpp: the types every attn header shares (the Matrix alias and Options).
#pragma once

#include <Eigen/Core>
#include <optional>
#include <vector>

static_assert(EIGEN_VERSION_AT_LEAST(3, 4, 0), "attn needs Eigen 3.4 or newer");

#define ATTN_VERSION_MAJOR 0
#define ATTN_VERSION_MINOR 1
#define ATTN_VERSION_PATCH 0

namespace attn {

using Index = Eigen::Index;

// Results are row-major: one query, key or token per row, stored contiguously, which is the layout
// of X·W for row-major X and the one the attention kernels stream through.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A band of keys around each query, for sliding-window (local) attention. Query i sits at key
// position p_i = i + (n_k - n_q) (the causal alignment) and may attend key j iff
// p_i - left <= j <= p_i + right. Either bound may be unbounded.
struct Window {
  static constexpr Index unbounded = -1;
  Index left = unbounded;
  Index right = unbounded;
};

struct Options {
  // Multiplies Q K^T before the mask is added; unset means 1/sqrt(d_k). Must be finite.
  std::optional<double> scale = std::nullopt;
  // Query i may attend key j iff j <= i + (n_k - n_q): the last query sees every key
  // (bottom-right alignment, as when new queries are appended to a longer cache of keys).
  bool causal = false;
  // Query heads: Q is n_q x (heads·d_k), and the output n_q x (heads·d_v) in the same layout.
  int heads = 1;
  // Key/value heads, 0 meaning as many as heads. heads must be a multiple of it; each group of
  // heads / kv_heads query heads shares one key/value head (grouped-query attention).
  int kv_heads = 0;
  // Sliding-window attention; it intersects with causal (which is right = 0) and with masks.
  Window window = {};
  // ALiBi (Press et al. 2022): empty, or one slope per head; head h adds -slope_h |p_i - j| to its
  // scaled scores, so far keys are penalised linearly in distance.
  std::vector<double> alibi_slopes = {};
  // Logit soft-capping (Gemma 2): 0 for none, else the scaled scores become cap · tanh(s / cap),
  // before ALiBi and the masks are applied.
  double softcap = 0;
  // Attention sinks: empty, or one logit per head that joins every row's softmax denominator and
  // carries no value, so a row may give weight to "nothing": its weights then sum to less than 1.
  std::vector<double> sinks = {};
  // Threads for the fused kernel when attn is built with OpenMP; 0 means OpenMP's default.
  // Results are bitwise identical for every value.
  int threads = 0;
};

}  // namespace attn
