// Which strategy runs the per-step recurrent product, and on how many threads:
// the size-dependent choices of the CPU kernels, each with what it was
// measured on (strategy.cpp).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "fusedrnn/cell.h"
#include "fusedrnn/sequence_frame.h"

namespace fusedrnn {
namespace cpu {

// How the per-step recurrent product runs: `gemm` (ATen's BLAS per step,
// gemm_strategy.h), `fused` (packed micro-kernel; input projection as GEMMs
// over chunks of steps) or `folded` (fused, with the input projection inside
// the per-step product; LSTM and RNN), both fused_strategy.h.  The backward is
// the same for both fused ones.
enum class Strategy { automatic, gemm, fused, folded };

// The sizes a strategy is chosen by.
struct ProblemSizes {
  int64_t batch = 0, steps = 0, input = 0, hidden = 0, state = 0;  // state: the size of h (P with a projection)
};
ProblemSizes problem_sizes(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& steps);

// The strategy `automatic` picks for these sizes, and (when it is gemm) why
// not a fused one (the forward_strategy op reports it).
Strategy choose_strategy(const Cell& cell, const ProblemSizes& sizes, at::ScalarType dtype,
                         std::string* why_gemm = nullptr);

// The strategy to run: `automatic` resolved, a forced one checked.
Strategy resolve_strategy(Strategy strategy, const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s,
                          at::ScalarType dtype);

// Threads for the fused region: one per unit block at most, and one in all
// for tiny steps, where a barrier per step (worse: a descheduled partner on a
// busy machine) costs more than the step's product of `step_macs` MACs.
int threads_for_step(int64_t step_macs, int64_t blocks);

}  // namespace cpu
}  // namespace fusedrnn
