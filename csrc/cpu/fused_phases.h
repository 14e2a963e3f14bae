// A step of the fused strategies as a list of phases.
//
// A phase is what every thread of the region does between two barriers: for
// each of its own unit blocks, a product (micro-kernel, into the thread's
// tile) and the pointwise pass that consumes it while it is in L1.  Phases run
// in order, a barrier between consecutive ones (a phase reads what the
// previous one wrote across all threads' units: k = r*h, m, dout + dh, da_n),
// and one more ends the step (the next step reads this one's state).  A cell
// with a dependent second product (GRU reset_before, LSTMP) has a second
// phase rather than a branch inside the first; a cell that needs a reduction
// over a row inside the step (LayerNorm) would add a phase splitting rows
// instead of units.
//
// The list is built once per call from the cell; a phase is a plain function
// of the call's read-only state (Call), the thread's own state (Thread: its
// blocks, its tile) and the step: one indirect call per phase and step,
// nothing in the inner loops, no allocation per step.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "fusedrnn/sequence_frame.h"
#include "parallel.h"

namespace fusedrnn {
namespace cpu {

// The step at processing position p: its rows [off, off + n).
struct StepRows {
  int64_t p, n, off;
};

inline StepRows step_rows(const frame::Steps& s, int64_t p) {
  const int64_t t = s.order[p];
  return StepRows{p, s.size[t], s.offset[t]};
}

template <typename Call, typename Thread>
class PhaseList {
 public:
  using Phase = void (*)(const Call&, Thread&, const StepRows&);

  void add(Phase phase) {
    TORCH_INTERNAL_ASSERT(count_ < kMaxPhases, "fusedrnn_C: too many phases in a fused step");
    phases_[count_++] = phase;
  }

  // One step on this thread: the phases in order, a barrier after each.
  void run_step(const Call& call, Thread& thread, const StepRows& step, Barrier& barrier) const {
    for (int i = 0; i < count_; ++i) {
      if (i > 0) barrier.wait();
      phases_[i](call, thread, step);
    }
    barrier.wait();
  }

 private:
  static constexpr int kMaxPhases = 4;
  Phase phases_[kMaxPhases] = {};
  int count_ = 0;
};

// Calls fn(first, count) for the unit blocks [b0, b1), `group` at a time (the
// last group may be shorter): adjacent blocks' panels are adjacent, so a
// group is one product of `count` panels.
template <typename F>
void for_block_groups(int64_t b0, int64_t b1, int64_t group, const F& fn) {
  for (int64_t blk = b0; blk < b1; blk += group) fn(blk, std::min(group, b1 - blk));
}

// Rows [0, n) of a product tile (row stride ld_tile), their first `width`
// units, into dst (row stride ld_dst): where a second product's units go.
inline void copy_tile_rows(const float* tile, int64_t ld_tile, int64_t n, int64_t width, float* dst,
                           int64_t ld_dst) {
  for (int64_t b = 0; b < n; ++b) std::copy(tile + b * ld_tile, tile + b * ld_tile + width, dst + b * ld_dst);
}

}  // namespace cpu
}  // namespace fusedrnn
