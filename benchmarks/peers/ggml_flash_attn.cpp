// Times ggml's CPU flash attention (ggml_flash_attn_ext) on the shapes of shared/WORKLOAD.md, the
// way llama.cpp calls it: Q as [d, n_q, heads], K and V as [d, n_k, kv_heads], an F16 mask for
// causal, scale 1/sqrt(d). Built and run by benchmarks/peers/ggml.sh against the prebuilt ggml
// shared libraries of npm's @node-llama-cpp/linux-x64, which ship no headers: the handful of
// declarations below follow ggml.h and ggml-cpu.h of that release.
//
// usage: ggml_flash_attn THREADS SHAPE [f32|f16]   (K/V type; f32 unless given)
// prints: "ggml-flash-attn-KV SHAPE THREADS GFLOP/s max_abs_err_vs_attn"; fails, untimed, when
// ggml's output is not attn's (1e-4 with F32 K/V, 2e-2 with F16)
#include <attn/attn.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../workload.hpp"

extern "C" {
struct ggml_context;
struct ggml_tensor;
struct ggml_cgraph;
struct ggml_init_params {
  std::size_t mem_size;
  void* mem_buffer;
  bool no_alloc;
};
// enum ggml_type, enum ggml_prec and enum ggml_status are plain C enums: int in the ABI
ggml_context* ggml_init(ggml_init_params params);
void ggml_free(ggml_context* ctx);
ggml_tensor* ggml_new_tensor_4d(ggml_context* ctx, int type, std::int64_t ne0, std::int64_t ne1,
                                std::int64_t ne2, std::int64_t ne3);
void* ggml_get_data(const ggml_tensor* tensor);
ggml_tensor* ggml_flash_attn_ext(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                                 ggml_tensor* mask, float scale, float max_bias,
                                 float logit_softcap);
void ggml_flash_attn_ext_set_prec(ggml_tensor* a, int prec);
ggml_cgraph* ggml_new_graph(ggml_context* ctx);
void ggml_build_forward_expand(ggml_cgraph* graph, ggml_tensor* tensor);
void ggml_fp32_to_fp16_row(const float* x, std::uint16_t* y, std::int64_t n);
void ggml_cpu_init(void);
int ggml_graph_compute_with_ctx(ggml_context* ctx, ggml_cgraph* graph, int n_threads);
}

namespace {

constexpr int kTypeF32 = 0, kTypeF16 = 1, kPrecF32 = 10, kStatusSuccess = 0;

using attn_bench::kShapes;
using attn_bench::Shape;

void fill(ggml_tensor* t, const std::vector<float>& values, int type) {
  if (type == kTypeF32)
    std::memcpy(ggml_get_data(t), values.data(), values.size() * sizeof(float));
  else
    ggml_fp32_to_fp16_row(values.data(), static_cast<std::uint16_t*>(ggml_get_data(t)),
                          static_cast<std::int64_t>(values.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s THREADS SHAPE [f32|f16]\n", argv[0]);
    return 2;
  }
  const int threads = std::atoi(argv[1]);
  const std::string id = argv[2], kv = argc > 3 ? argv[3] : "f32";
  const Shape* shape = nullptr;
  for (const Shape& s : kShapes)
    if (id == s.id) shape = &s;
  if (!shape || threads < 1 || (kv != "f32" && kv != "f16")) {
    std::fprintf(stderr, "unknown shape, thread count or K/V type\n");
    return 2;
  }
  const int h = shape->heads, n_q = shape->n_q, n_k = shape->n_k, d = shape->d;
  const int kv_type = kv == "f32" ? kTypeF32 : kTypeF16;

  ggml_cpu_init();
  const std::size_t bytes = sizeof(float) * (std::size_t{3} * h * n_k * d + 2 * h * n_q * d) +
                            sizeof(std::uint16_t) * std::size_t{1} * n_q * n_k + (64 << 20);
  ggml_context* ctx = ggml_init({bytes, nullptr, false});

  // The library's layout, n x (heads·d), is ggml's [d, n, heads] transposed per head; fill both.
  std::mt19937 gen(42);
  std::normal_distribution<float> normal;
  attn::Matrix<float> q(n_q, h * d), k(n_k, h * d), v(n_k, h * d);
  for (auto* m : {&q, &k, &v})
    for (Eigen::Index i = 0; i < m->size(); ++i) m->data()[i] = normal(gen);
  auto to_ggml = [&](const attn::Matrix<float>& m) {  // [d, n, heads], d fastest
    std::vector<float> out(static_cast<std::size_t>(m.size()));
    for (int head = 0; head < h; ++head)
      for (Eigen::Index row = 0; row < m.rows(); ++row)
        for (int c = 0; c < d; ++c)
          out[(static_cast<std::size_t>(head) * m.rows() + row) * d + c] = m(row, head * d + c);
    return out;
  };

  ggml_tensor* gq = ggml_new_tensor_4d(ctx, kTypeF32, d, n_q, h, 1);
  ggml_tensor* gk = ggml_new_tensor_4d(ctx, kv_type, d, n_k, h, 1);
  ggml_tensor* gv = ggml_new_tensor_4d(ctx, kv_type, d, n_k, h, 1);
  fill(gq, to_ggml(q), kTypeF32);
  fill(gk, to_ggml(k), kv_type);
  fill(gv, to_ggml(v), kv_type);
  ggml_tensor* mask = nullptr;
  if (shape->causal) {  // llama.cpp's form: 0 where key j <= query i, -inf above the diagonal
    mask = ggml_new_tensor_4d(ctx, kTypeF16, n_k, n_q, 1, 1);
    std::vector<float> m(static_cast<std::size_t>(n_q) * n_k);
    for (int i = 0; i < n_q; ++i)
      for (int j = 0; j < n_k; ++j)
        m[static_cast<std::size_t>(i) * n_k + j] = j <= i + (n_k - n_q) ? 0.0f : -INFINITY;
    fill(mask, m, kTypeF16);
  }
  ggml_tensor* out = ggml_flash_attn_ext(ctx, gq, gk, gv, mask, 1.0f / std::sqrt(float(d)), 0, 0);
  ggml_flash_attn_ext_set_prec(out, kPrecF32);
  ggml_cgraph* graph = ggml_new_graph(ctx);
  ggml_build_forward_expand(graph, out);

  // Each compute takes its work buffer from the context it is given: a scratch one per call.
  std::vector<unsigned char> scratch(std::size_t{256} << 20);
  auto compute = [&] {
    ggml_context* work = ggml_init({scratch.size(), scratch.data(), false});
    const int status = ggml_graph_compute_with_ctx(work, graph, threads);
    ggml_free(work);
    if (status != kStatusSuccess) {
      std::fprintf(stderr, "ggml_graph_compute failed: %d\n", status);
      std::exit(1);
    }
  };

  compute();
  // out is [d, heads, n_q]: row i of the library's output, head by head
  const attn::Matrix<float> expected = attn::scaled_dot_product_attention(
      q, k, v, attn::Options{.causal = shape->causal, .heads = h});
  const float* o = static_cast<const float*>(ggml_get_data(out));
  double err = 0;
  for (int i = 0; i < n_q; ++i)
    for (int c = 0; c < h * d; ++c)
      err = std::max(err,
                     double(std::abs(o[static_cast<std::size_t>(i) * h * d + c] - expected(i, c))));

  // A layout or API mismatch shows as a large error: refuse to time the wrong computation.
  if (!(err <= (kv == "f32" ? 1e-4 : 2e-2))) {
    std::fprintf(stderr, "ggml's output differs from attn's by %.3g: not timed\n", err);
    return 1;
  }

  using clock = std::chrono::steady_clock;
  std::vector<double> per_call;
  for (int round = 0; round < 5; ++round) {
    int calls = 0;
    const auto start = clock::now();
    double elapsed = 0;
    do {
      compute();
      ++calls;
      elapsed = std::chrono::duration<double>(clock::now() - start).count();
    } while (elapsed < 0.3);
    per_call.push_back(elapsed / calls);
  }
  std::nth_element(per_call.begin(), per_call.begin() + 2, per_call.end());
  const double flops = shape->flops();
  std::printf("ggml-flash-attn-%s %s %d %.1f GFLOP/s max_abs_err_vs_attn %.2e\n", kv.c_str(),
              shape->id, threads, flops / per_call[2] * 1e-9, err);
  ggml_free(ctx);
}
