// Which strategy runs a call of the CUDA kernels (csrc/cuda/README.md has the
// rule): `per_step` (a cuBLAS product and one fused pointwise kernel per
// step) or `persistent` (one cooperative kernel for the whole sequence),
// chosen for the forward and the backward apart, each by its planner.
#pragma once

#include <string>

#include "fusedrnn/cell.h"
#include "launchers.cuh"

namespace fusedrnn {
namespace cuda {

enum class Strategy { automatic, per_step, persistent };

Strategy parse_strategy(const std::string& s);

// What a call runs, with the persistent kernel's plan (or why not persistent).
struct Choice {
  Strategy strategy = Strategy::per_step;
  PersistentCell cell = PersistentCell::lstm;
  PersistentPlan plan;
  std::string why_not_persistent;
};

// plan_persistent_forward or plan_persistent_backward (launchers.cuh)
using Planner = PersistentPlan (*)(PersistentCell, DType, int64_t, int64_t, int64_t, int);

// The sizes a strategy is chosen by: B rows, hidden size H, h of size P (the
// projection size, else H), `steps` steps, on `device`.
struct ProblemSizes {
  int64_t B = 0, H = 0, P = 0, steps = 0;
  bool projection = false;
  DType dtype = DType::f32;
  int device = 0;
};

// What "auto" picks.
Choice choose(Planner planner, const Cell& cell, const ProblemSizes& n);

// `requested` resolved: auto's choice, per_step, or the persistent kernel
// forced (a RuntimeError with the planner's reason where it cannot run).
Choice resolve_strategy(Strategy requested, Planner planner, const Cell& cell, const ProblemSizes& n);

// "persistent", or "per_step: <why not persistent>" (the *_strategy ops).
std::string describe(const Choice& c);

}  // namespace cuda
}  // namespace fusedrnn
