#include "strategy.h"

#include <algorithm>

#include "parallel.h"

namespace fusedrnn {
namespace cpu {

namespace {

// Whether the fused forward computes the input projection inside its per-step
// product ([x_t, h_{t-1}] times [W_ih; W_hh]^T, two terms of one register
// tile) rather than as a GEMM over a chunk of steps: the micro-kernel runs
// nearer the core's FMA peak than the GEMM does, and the gate pass then reads
// no projected-input buffer.  But each step then streams W_ih's panels too, so
// only while both packed weights stay in the last-level cache and a step has
// rows enough to reuse them.  Paired runs (LSTM inference, 2 threads, Zen 4
// with 32 MiB L3), folded against the chunked GEMM: faster from B = 4 with up
// to 18 MiB of panels, and at B = 2 with I <= H; slower at B = 1, at B = 2
// with I = 4096, H = 128 (the input product, nearly all the work, turns from a
// compute-bound GEMM into a per-step stream of W_ih), and with 24 MiB of
// panels or more, even at B = 64.  The figures: benchmarks/RESULTS.md, AMD
// EPYC section, "What changed since the previous table" (the first item).
// Not for the GRU, whose n gate keeps the input and hidden products apart (r
// scales only the hidden one).
// The packed weights of a step's product with the input projection folded in: [W_ih; W_hh] panels.
int64_t panel_bytes(const Cell& cell, int64_t input_size, int64_t hidden_size, int64_t state_size) {
  return cell.gates() * hidden_size * (input_size + state_size) * int64_t(sizeof(float));
}

bool fold_input_projection(const Cell& cell, int64_t batch, int64_t input_size, int64_t hidden_size,
                           int64_t state_size) {
  constexpr int64_t kMaxPanelBytes = int64_t(20) << 20;
  if (cell.family == Family::gru || batch < 2) return false;
  if (batch < 4 && input_size > hidden_size) return false;
  return panel_bytes(cell, input_size, hidden_size, state_size) <= kMaxPanelBytes;
}

// The fused kernels are float32 (float16/bfloat16 run in float32 inside);
// double takes the gemm strategy.
bool fused_supported(const Cell&, at::ScalarType dtype) {
  return dtype == at::kFloat;
}

// A single step runs the fused kernels up to this much of packed weights (choose_strategy).
constexpr int64_t kSingleStepPanelBytes = int64_t(512) << 10;

int64_t panel_bytes(const Cell& cell, const ProblemSizes& n) {
  return panel_bytes(cell, n.input, n.hidden, n.state);
}

}  // namespace

ProblemSizes problem_sizes(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& steps) {
  return ProblemSizes{steps.batch, steps.count(), w.w_ih.size(1), w.w_hh.size(0) / cell.gates(), w.w_hh.size(1)};
}

Strategy choose_strategy(const Cell& cell, const ProblemSizes& n, at::ScalarType dtype, std::string* why_gemm) {
  const auto gemm = [&](const char* why) {
    if (why_gemm != nullptr) *why_gemm = why;
    return Strategy::gemm;
  };
  if (!fused_supported(cell, dtype)) return gemm("the fused kernels compute in float32; float64 runs ATen's BLAS");
  // One step (a cell call): packing the weights costs about as much as the step, except where they
  // are small and the per-step GEMM path's dozens of ATen calls cost more than packing them
  // (benchmarks/RESULTS.md, "One step": the measurements the threshold comes from).  Folded at any
  // batch then (faster than fused there even at B = 1); the GRU has no folded form.
  if (n.steps < 2) {
    if (panel_bytes(cell, n) > kSingleStepPanelBytes) {
      return gemm("a single step with large weights: packing them would cost as much as the step");
    }
    return cell.family == Family::gru ? Strategy::fused : Strategy::folded;
  }
  // The fused kernel beat the per-step MKL GEMM at every one of the issue-4
  // shapes (B = 8, 32, 64; 2 threads, AVX-512), so no batch cut-off yet
  // (benchmarks/RESULTS.md, "measurements behind choices in the code").
  return fold_input_projection(cell, n.batch, n.input, n.hidden, n.state) ? Strategy::folded : Strategy::fused;
}

Strategy resolve_strategy(Strategy strategy, const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s,
                          at::ScalarType dtype) {
  if (strategy == Strategy::automatic) return choose_strategy(cell, problem_sizes(cell, w, s), dtype);
  TORCH_CHECK(strategy == Strategy::gemm || fused_supported(cell, dtype),
              "fusedrnn_C: the fused strategies run float32 only (float16/bfloat16 are computed in float32)");
  TORCH_CHECK(strategy != Strategy::folded || cell.family != Family::gru,
              "fusedrnn_C: the folded strategy supports LSTM and RNN only (the GRU's n gate keeps its input product "
              "apart)");
  return strategy;
}

int threads_for_step(int64_t step_macs, int64_t blocks) {
  if (step_macs < (int64_t(1) << 17)) return 1;
  return static_cast<int>(std::min<int64_t>(max_threads(), blocks));
}

}  // namespace cpu
}  // namespace fusedrnn
