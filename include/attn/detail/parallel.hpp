// attn/detail/parallel.hpp: the one place attn touches OpenMP.
//
// Built without OpenMP, attn is serial and the pragmas vanish. Built with it (the CMake option
// ATTN_OPENMP, or -fopenmp), the kernels share independent work items among the threads. Each item
// is computed start to finish by one thread, in a fixed order, with no reduction across threads,
// so results are bitwise identical for every thread count and schedule.
#pragma once

#include <algorithm>

#include "attn/common.hpp"

#ifdef _OPENMP
#include <omp.h>
#define ATTN_PRAGMA(x) _Pragma(#x)
#else
#define ATTN_PRAGMA(x)
#endif

namespace attn::detail {

// The threads to use for `items` work items: Options::threads, or OpenMP's default when it is 0;
// 1 inside an enclosing parallel region (the caller already owns the cores) or without OpenMP.
inline int thread_count(int requested, Index items) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  const Index t = requested > 0 ? requested : omp_get_max_threads();
  return static_cast<int>(std::max<Index>(1, std::min(t, items)));
#else
  (void)requested;
  (void)items;
  return 1;
#endif
}

// Runs body(item, workspace) for item in [0, items), each thread with a workspace of its own made
// by make_workspace(). Items are handed out one at a time (dynamic), which balances causal tiles
// of unequal cost and cannot change any result.
template <class MakeWorkspace, class Body>
void parallel_for(Index items, int threads, MakeWorkspace&& make_workspace, Body&& body) {
  const int t = thread_count(threads, items);
  if (t <= 1) {
    auto ws = make_workspace();
    for (Index item = 0; item < items; ++item) body(item, ws);
    return;
  }
  ATTN_PRAGMA(omp parallel num_threads(t)) {
    auto ws = make_workspace();
    ATTN_PRAGMA(omp for schedule(dynamic, 1))
    for (Index item = 0; item < items; ++item) body(item, ws);
  }
}

}  // namespace attn::detail
