// The matmul-softmax-matmul core on the shapes of WORKLOAD.md, beside the naive Eigen composition a
// user would write and beside the machine's ceilings, all in one run so that ratios are honest.
//
// Every attention benchmark reports GFLOP/s = 4 h n_q n_k d / s (half for causal); D1 also reports
// the GB/s of K and V read. Threads are the benchmark's argument: attn's kernel, Eigen's products
// (naive) and OpenBLAS use that many.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <attn/attn.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "workload.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ATTN_BENCH_HAVE_FMA_ROOF 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>

#include <fstream>
#define ATTN_BENCH_HAVE_PEAK_RSS 1
#endif

namespace {

using attn_bench::add;
using attn_bench::report;
using attn_bench::set_threads;
using attn_bench::thread_counts;

using attn_bench::kShapes;
using attn_bench::Shape;

template <class M>
std::vector<M> random_heads(int heads, int rows, int cols, unsigned seed) {
  std::srand(seed);  // Eigen's Random() draws from std::rand
  std::vector<M> out;
  for (int h = 0; h < heads; ++h) out.push_back(M::Random(rows, cols));
  return out;
}

// What a user writes from the formula: three lines of Eigen, column-major, a mask for causal.
template <class T>
void naive(benchmark::State& state, Shape s) {
  using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  set_threads(int(state.range(0)));
  const auto q = random_heads<M>(s.heads, s.n_q, s.d, 1),
             k = random_heads<M>(s.heads, s.n_k, s.d, 2),
             v = random_heads<M>(s.heads, s.n_k, s.d, 3);
  M causal_bias = M::Zero(s.n_q, s.n_k);
  for (int i = 0; i < s.n_q; ++i)
    for (int j = 0; j < s.n_k; ++j)
      if (!attn::causal_allows(i, j, s.n_q, s.n_k))
        causal_bias(i, j) = -std::numeric_limits<T>::infinity();
  const T scale = T(1) / std::sqrt(T(s.d));
  for (auto _ : state) {
    for (int h = 0; h < s.heads; ++h) {
      M scores = (q[h] * k[h].transpose()) * scale;
      if (s.causal) scores += causal_bias;
      M p = (scores.colwise() - scores.rowwise().maxCoeff()).array().exp();
      M o = (p.array().colwise() / p.rowwise().sum().array()).matrix() * v[h];
      benchmark::DoNotOptimize(o.data());
    }
  }
  report(state, s.flops(), s.n_q == 1 ? 2.0 * s.heads * s.n_k * s.d * sizeof(T) : 0);
}

#ifdef ATTN_BENCH_HAVE_PEAK_RSS
// A field of /proc/self/status in bytes (VmRSS: resident now; VmHWM: its peak).
double status_bytes(const std::string& key) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind(key + ":", 0) == 0) return 1024.0 * std::stod(line.substr(key.size() + 1));
  return -1;
}

// Peak resident memory that f() adds, in bytes: freed heap is first returned to the system and the
// peak reset (clear_refs 5), so every page f touches counts. -1 where the peak cannot be reset.
template <class F>
double peak_extra_bytes(F&& f) {
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
  const double before = status_bytes("VmRSS");
  if (status_bytes("VmHWM") > before + 4096) return -1;  // the reset did not take
  f();
  return status_bytes("VmHWM") - before;
}
#endif

// The library's own layout: every head in one call, Q, K, V as n x (h·d) row-major matrices.
template <class T>
void library(benchmark::State& state, Shape s) {
  using M = attn::Matrix<T>;
  const int threads = int(state.range(0));
  set_threads(threads);
  std::srand(1);
  const M q = M::Random(s.n_q, s.heads * s.d), k = M::Random(s.n_k, s.heads * s.d),
          v = M::Random(s.n_k, s.heads * s.d);
  const attn::Options options{.causal = s.causal, .heads = s.heads, .threads = threads};
#ifdef ATTN_BENCH_HAVE_PEAK_RSS
  // Memory beyond the inputs and the output, the first call measured alone.
  const double output_bytes = double(s.n_q) * s.heads * s.d * sizeof(T);
  const double extra = peak_extra_bytes([&] {
    M o = attn::scaled_dot_product_attention(q, k, v, options);
    benchmark::DoNotOptimize(o.data());
  });
  if (extra >= 0) state.counters["extra_MiB"] = std::max(0.0, extra - output_bytes) / (1 << 20);
#endif
  for (auto _ : state) {
    M o = attn::scaled_dot_product_attention(q, k, v, options);
    benchmark::DoNotOptimize(o.data());
  }
  report(state, s.flops(), s.n_q == 1 ? 2.0 * s.heads * s.n_k * s.d * sizeof(T) : 0);
}

// A whole layer, projections included: d_model 512, d_k = d_v = 64 fixed, n = 1024.
void self_attention_forward(benchmark::State& state) {
  constexpr int d_model = 512, d = 64, n = 1024;
  set_threads(int(state.range(0)));
  const attn::SelfAttention<float, d> layer(d_model);
  std::srand(4);
  const attn::Matrix<float> x = attn::Matrix<float>::Random(n, d_model);
  for (auto _ : state) {
    attn::Matrix<float> o = layer.forward(x);
    benchmark::DoNotOptimize(o.data());
  }
  report(state, 3 * 2.0 * n * d_model * d + 4.0 * n * n * d);
}

// --- Ceilings of the machine, measured in the same run -------------------------------------

#ifdef ATTN_BENCH_HAVE_FMA_ROOF
// 12 independent 8-wide FMA chains in registers: enough in flight to cover the FMA latency on
// both pipes, so this is the arithmetic limit of a core.
double fma_chains(long iterations) {
  __m256 acc[12];
  for (int c = 0; c < 12; ++c) acc[c] = _mm256_set1_ps(float(c) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i)
    for (int c = 0; c < 12; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  __m256 sum = acc[0];
  for (int c = 1; c < 12; ++c) sum = _mm256_add_ps(sum, acc[c]);
  return double(_mm256_cvtss_f32(sum));
}

void fma_roof(benchmark::State& state) {
  const int threads = int(state.range(0));
  constexpr long iterations = 1 << 22;
  for (auto _ : state) {
    double sink = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sink)
    for (int t = 0; t < threads; ++t) sink += fma_chains(iterations);
    benchmark::DoNotOptimize(sink);
  }
  report(state, double(threads) * iterations * 12 * 8 * 2);
}
#endif

#ifdef ATTN_BENCH_HAVE_CBLAS
void sgemm_1024(benchmark::State& state) {
  constexpr int n = 1024;
  set_threads(int(state.range(0)));
  const attn::Matrix<float> a = attn::Matrix<float>::Random(n, n),
                            b = attn::Matrix<float>::Random(n, n);
  attn::Matrix<float> c(n, n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  report(state, 2.0 * n * n * n);
}
#endif

// Summing a 256 MiB array: the rate at which a decode step can stream its KV cache.
void read_bandwidth(benchmark::State& state) {
  const int threads = int(state.range(0));
  const Eigen::Index n = (Eigen::Index(256) << 20) / sizeof(float);
  const Eigen::VectorXf data = Eigen::VectorXf::Ones(n);
  for (auto _ : state) {
    float sum = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sum)
    for (int t = 0; t < threads; ++t) {
      const Eigen::Index begin = n * t / threads, end = n * (t + 1) / threads;
      sum += data.segment(begin, end - begin).sum();
    }
    benchmark::DoNotOptimize(sum);
  }
  report(state, 0, double(n) * sizeof(float));
}

void register_all() {
#ifdef ATTN_BENCH_HAVE_FMA_ROOF
  add("ceiling/fma_roof", fma_roof);
#endif
#ifdef ATTN_BENCH_HAVE_CBLAS
  add("ceiling/sgemm_1024", sgemm_1024);
#endif
  add("ceiling/read_bandwidth", read_bandwidth);
  for (const Shape& s : kShapes) {
    add(std::string("naive/") + s.id, [s](benchmark::State& st) { naive<float>(st, s); });
    add(std::string("attn/") + s.id, [s](benchmark::State& st) { library<float>(st, s); });
  }
  // double, on the encoder-layer shape
  add("naive_double/S3", [](benchmark::State& st) { naive<double>(st, kShapes[2]); });
  add("attn_double/S3", [](benchmark::State& st) { library<double>(st, kShapes[2]); });
  add("self_attention_forward/n1024_dmodel512_dk64", self_attention_forward);
}

// The summary: per shape and thread count the naive and attn rates, the ceilings measured in
// the same process, and their ratios.
class Summary : public attn_bench::SummaryReporter {
 protected:
  void summary(std::ostream& out) const override {
    const auto get = [&](const std::string& name, int t, const char* key) {
      return value(name, t, key);
    };
    const auto num = [](double x, int digits = 1) {
      if (x < 0) return std::string("-");
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.*f", digits, x);
      return std::string(buf);
    };
    const auto ratio = [&](double a, double b) {
      return a < 0 || b <= 0 ? num(-1) : num(a / b, 2);
    };
    out << "\nsummary (GFLOP/s, one run; ratios of medians)\n";
    for (const int t : thread_counts()) {
      const double roof = get("ceiling/fma_roof", t, "GFLOPS"),
                   sgemm = get("ceiling/sgemm_1024", t, "GFLOPS"),
                   bw = get("ceiling/read_bandwidth", t, "GBps");
      out << "threads " << t << ": FMA roof " << num(roof) << ", sgemm 1024^3 " << num(sgemm)
          << ", read " << num(bw) << " GB/s\n";
      for (const Shape& sh : kShapes) {
        for (const char* suffix : {"", "_double"}) {
          const std::string id = sh.id;
          const double naive = get(std::string("naive") + suffix + "/" + id, t, "GFLOPS"),
                       lib = get(std::string("attn") + suffix + "/" + id, t, "GFLOPS");
          if (naive < 0 && lib < 0) continue;
          out << "  " << id << (*suffix ? " double" : "") << ": naive " << num(naive) << ", attn "
              << num(lib) << ", attn/naive " << ratio(lib, naive) << ", attn/roof "
              << ratio(lib, roof) << ", attn/sgemm " << ratio(lib, sgemm);
          const double gbs = get(std::string("attn") + suffix + "/" + id, t, "GBps");
          if (gbs >= 0)
            out << ", " << num(gbs) << " GB/s = " << ratio(gbs, bw) << " of read bandwidth";
          out << "\n";
        }
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) { return attn_bench::run<Summary>(argc, argv, register_all); }
