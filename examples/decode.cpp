// Autoregressive decoding with a KV cache: a grouped-query MultiHeadAttention layer with RoPE
// reads a prompt in one prefill, then generates tokens one at a time, each new token's input
// being made from the previous output. The same loop runs again without a cache, recomputing the
// causal forward of the whole sequence at every step, as a decoder without one must. Both print
// ms per token; the two generated sequences must agree, or the program fails.
//
//   example_decode [tokens]      (default 256; the prompt is 64 tokens)
#include <attn/attn.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// The next token's embedding from the layer's output for the last one: bounded, so that the
// loop can run for any number of steps (a real model would sample a token and embed it).
attn::Matrix<float> next_input(const attn::Matrix<float>& y_last) {
  return y_last.array().tanh().matrix();
}

}  // namespace

int main(int argc, char** argv) {
  const Eigen::Index generate = argc > 1 ? std::atol(argv[1]) : 256, prompt = 64;
  constexpr Eigen::Index d_model = 512;
  // 16 query heads of 32 over 4 key/value heads, LLaMA-style rotary positions.
  attn::MultiHeadAttention<float> layer(d_model, /*heads=*/16, /*kv_heads=*/4, /*d_head=*/32);
  layer.rope() = attn::Rope{.base = 10000, .style = attn::RopeStyle::half_split};

  attn::Rng rng(7);
  attn::Matrix<float> x(prompt + generate, d_model);  // the whole sequence, filled as it grows
  attn::glorot_uniform(x, rng);

  // With the cache: one prefill of the prompt, then one token per step.
  attn::Matrix<float> cached = x;
  auto cache = layer.make_cache(prompt + generate);
  auto t0 = Clock::now();
  attn::Matrix<float> y = layer.forward(cached.topRows(prompt), cache);
  const double prefill_ms = ms_since(t0);
  attn::Matrix<float> last = y.bottomRows(1);
  t0 = Clock::now();
  for (Eigen::Index t = prompt; t < prompt + generate; ++t) {
    cached.row(t) = next_input(last);
    last = layer.forward(cached.row(t), cache);
  }
  const double cached_ms = ms_since(t0);

  // Without: the causal forward of everything so far, at every step, keeping its last row.
  attn::Matrix<float> recomputed = x;
  last = layer.forward(recomputed.topRows(prompt), {.causal = true}).bottomRows(1);
  t0 = Clock::now();
  for (Eigen::Index t = prompt; t < prompt + generate; ++t) {
    recomputed.row(t) = next_input(last);
    last = layer.forward(recomputed.topRows(t + 1), {.causal = true}).bottomRows(1);
  }
  const double full_ms = ms_since(t0);

  const float diff = (cached - recomputed).cwiseAbs().maxCoeff();
  std::printf(
      "prompt %ld tokens, %ld generated; d_model %ld, 16 heads over 4 KV heads of 32, RoPE\n",
      long(prompt), long(generate), long(d_model));
  std::printf("prefill:                         %8.2f ms\n", prefill_ms);
  std::printf("with the KV cache:               %8.3f ms per token\n", cached_ms / generate);
  std::printf("recomputing the causal forward:  %8.3f ms per token (%.1fx slower)\n",
              full_ms / generate, full_ms / cached_ms);
  std::printf("max |difference| of the generated inputs: %.3g\n", diff);
  return diff <= 1e-4f ? 0 : 1;
}
