// What every attn benchmark binary shares: thread control, the rate counters, registration.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <map>
#include <ostream>
#include <string>
#include <utility>
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

// Google Benchmark's console lines, and every run's counters kept by (name, threads) (the median
// when repeated) for a summary printed at the end: the ratios it quotes compare numbers of one
// run, taken minutes apart at most.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred || (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median"))
        continue;
      const std::string& args = r.run_name.args;  // "threads:N"
      const auto colon = args.find(':');
      if (colon == std::string::npos) continue;
      auto& cell = cells_[{r.run_name.function_name, std::stoi(args.substr(colon + 1))}];
      for (const auto& [key, counter] : r.counters) cell[key] = counter.value;
    }
  }

  void Finalize() override {
    summary(GetOutputStream());
    ConsoleReporter::Finalize();
  }

 protected:
  virtual void summary(std::ostream& out) const = 0;

  // A counter of benchmark `name` at `threads`, or -1 where it did not run.
  double value(const std::string& name, int threads, const std::string& key) const {
    const auto it = cells_.find({name, threads});
    if (it == cells_.end()) return -1;
    const auto v = it->second.find(key);
    return v == it->second.end() ? -1 : v->second;
  }

 private:
  std::map<std::pair<std::string, int>, std::map<std::string, double>> cells_;
};

// main() of a benchmark binary: register, parse the flags, run with Reporter's summary.
template <class Reporter>
int run(int argc, char** argv, void (*register_all)()) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace attn_bench
