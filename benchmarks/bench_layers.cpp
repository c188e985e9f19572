// The layers around the kernel: a MultiHeadAttention forward with its projections, decode steps
// against a KV cache, and a packed batch of sequences of different lengths against the same
// sequences one call at a time. Threads are the benchmark's argument, as in bench_attention.
#include <benchmark/benchmark.h>

#include <attn/attn.hpp>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

using attn_bench::add;
using attn_bench::report;
using attn_bench::set_threads;
using attn_bench::thread_counts;
using M = attn::Matrix<float>;

// FLOPs of a layer forward over n tokens: four projections and the attention core.
double layer_flops(Eigen::Index n, Eigen::Index d_model, int heads, int kv_heads, Eigen::Index d,
                   bool causal) {
  const double proj = 2.0 * n * d_model * (2.0 * heads * d + 2.0 * kv_heads * d);
  return proj + (causal ? 2.0 : 4.0) * heads * double(n) * n * d;
}

// MultiHeadAttention::forward on S3- and S6-sized layers: 8 heads of 64 or 128, n = 1024.
void mha_forward(benchmark::State& state, Eigen::Index d_head) {
  const int threads = int(state.range(0)), heads = 8;
  const Eigen::Index n = 1024, d_model = heads * d_head;
  set_threads(threads);
  const attn::MultiHeadAttention<float> layer(d_model, heads);
  std::srand(1);
  const M x = M::Random(n, d_model);
  for (auto _ : state) {
    M y = layer.forward(x, {.threads = threads});
    benchmark::DoNotOptimize(y.data());
  }
  report(state, layer_flops(n, d_model, heads, heads, d_head, false));
}

// One decode step of the attention core: a token's 32 query heads attend a cache of `length`
// tokens of 8 key/value heads of 128 (GQA), and its key and value join the cache. The cache is
// rolled back after each step, so every step sees the same length. Rate: steps per second, and
// the GB/s of K and V read.
void decode_step(benchmark::State& state, Eigen::Index length) {
  const int threads = int(state.range(0)), heads = 32, kv_heads = 8;
  const Eigen::Index d = 128;
  set_threads(threads);
  attn::KVCache<float> cache(length, kv_heads * d, kv_heads * d);
  std::srand(2);
  cache.append(M::Random(length - 1, kv_heads * d), M::Random(length - 1, kv_heads * d));
  const M q = M::Random(1, heads * d), k = M::Random(1, kv_heads * d),
          v = M::Random(1, kv_heads * d);
  const attn::Options o{.heads = heads, .kv_heads = kv_heads, .threads = threads};
  for (auto _ : state) {
    M y = attn::cached_attention(q, k, v, cache, o);
    benchmark::DoNotOptimize(y.data());
    cache.truncate(length - 1);
  }
  state.counters["steps_per_s"] =
      benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  report(state, 4.0 * heads * length * d, 2.0 * length * kv_heads * d * sizeof(float));
}

// A packed batch against the same sequences one call each: 8 heads of 64, causal; four long
// prompts and sixty short ones (5 to 100 tokens), as a server's batch mixes them. Alone, a short
// sequence is a few work items: too few to keep the threads busy, and each call pays its setup.
const std::vector<Eigen::Index> kBatch = [] {
  std::vector<Eigen::Index> lengths{1024, 700, 512, 300};
  for (int s = 0; s < 60; ++s) lengths.push_back(5 + (37 * s) % 96);
  return lengths;
}();

std::vector<Eigen::Index> batch_offsets() {
  std::vector<Eigen::Index> o{0};
  for (Eigen::Index n : kBatch) o.push_back(o.back() + n);
  return o;
}

double batch_flops(int heads, Eigen::Index d) {
  double f = 0;
  for (Eigen::Index n : kBatch) f += 2.0 * heads * double(n) * n * d;
  return f;
}

void batch(benchmark::State& state, bool packed) {
  const int threads = int(state.range(0)), heads = 8;
  const Eigen::Index d = 64;
  const auto offsets = batch_offsets();
  std::srand(3);
  const M q = M::Random(offsets.back(), heads * d), k = M::Random(offsets.back(), heads * d),
          v = M::Random(offsets.back(), heads * d);
  const attn::Options o{.causal = true, .heads = heads, .threads = threads};
  // Either way the batch's results end up in one matrix, as the next layer needs them.
  M y(offsets.back(), heads * d);
  for (auto _ : state) {
    if (packed) {
      y = attn::varlen_attention(q, k, v, offsets, offsets, o);
    } else {
      for (std::size_t s = 0; s + 1 < offsets.size(); ++s) {
        const Eigen::Index b = offsets[s], n = offsets[s + 1] - b;
        y.middleRows(b, n) = attn::scaled_dot_product_attention(
            q.middleRows(b, n), k.middleRows(b, n), v.middleRows(b, n), o);
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  report(state, batch_flops(heads, d));
}

void register_all() {
  add("mha_forward/S3_dmodel512", [](benchmark::State& s) { mha_forward(s, 64); });
  add("mha_forward/S6_dmodel1024", [](benchmark::State& s) { mha_forward(s, 128); });
  for (const Eigen::Index length : {512, 4096, 16384})
    add("decode_step/gqa32x8_d128/cache" + std::to_string(length),
        [length](benchmark::State& s) { decode_step(s, length); });
  add("batch/varlen_packed", [](benchmark::State& s) { batch(s, true); });
  add("batch/one_call_each", [](benchmark::State& s) { batch(s, false); });
}

// The summary: the figures the README quotes, side by side.
class Summary : public attn_bench::SummaryReporter {
 protected:
  void summary(std::ostream& out) const override {
    const auto get = [&](const std::string& name, int t, const char* key) {
      return value(name, t, key);
    };
    char line[256];
    out << "\nsummary (one run; medians when repeated)\n";
    for (const int t : thread_counts()) {
      out << "threads " << t << ":\n";
      for (const char* name : {"mha_forward/S3_dmodel512", "mha_forward/S6_dmodel1024"}) {
        std::snprintf(line, sizeof line, "  %s: %.1f GFLOP/s (projections included)\n", name,
                      get(name, t, "GFLOPS"));
        out << line;
      }
      for (const int length : {512, 4096, 16384}) {
        const std::string name = "decode_step/gqa32x8_d128/cache" + std::to_string(length);
        std::snprintf(line, sizeof line, "  %s: %.0f steps/s, K and V read at %.1f GB/s\n",
                      name.c_str(), get(name, t, "steps_per_s"), get(name, t, "GBps"));
        out << line;
      }
      const double packed = get("batch/varlen_packed", t, "GFLOPS"),
                   each = get("batch/one_call_each", t, "GFLOPS");
      std::snprintf(line, sizeof line,
                    "  batch of %zu causal sequences: packed %.1f GFLOP/s, one call each %.1f "
                    "GFLOP/s, packed / each %.2fx\n",
                    kBatch.size(), packed, each, each > 0 ? packed / each : 0.0);
      out << line;
    }
  }
};

}  // namespace

int main(int argc, char** argv) { return attn_bench::run<Summary>(argc, argv, register_all); }
