// What every attn benchmark binary shares: thread control, the rate counters, registration.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <string>
#include <vector>

#ifdef ATTN_BENCH_HAVE_CBLAS
#include <cblas.h>
#endif

namespace attn_bench {

// Threads for Eigen's own products (the naive baselines, projections) and OpenBLAS; attn's
// kernels take theirs from Options::threads.
inline void set_threads(int threads) {
  Eigen::setNbThreads(threads);
#ifdef ATTN_BENCH_HAVE_CBLAS
  openblas_set_num_threads(threads);
#endif
}

// GFLOPS and GBps as rates over the run's iterations.
inline void report(benchmark::State& state, double flops, double bytes = 0) {
  if (flops > 0)
    state.counters["GFLOPS"] =
        benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (bytes > 0)
    state.counters["GBps"] =
        benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

inline std::vector<int> thread_counts() {
#ifdef _OPENMP
  return {1, 2};
#else
  return {1};
#endif
}

// Registers fn once per thread count, the count being its argument "threads".
template <class F>
void add(const std::string& name, F fn) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), fn);
  for (int t : thread_counts()) b->Arg(t);
  b->ArgName("threads")->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace attn_bench
