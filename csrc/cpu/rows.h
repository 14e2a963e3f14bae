// Where the rows of a step find their previous state: the previous processed
// step's rows, or (reverse direction of packed input) the initial state.  The
// step bookkeeping itself is fusedrnn/sequence_frame.h (Steps).
#pragma once

#include <ATen/ATen.h>

#include "fusedrnn/sequence_frame.h"
#include "view.h"

namespace fusedrnn {
namespace cpu {

// Calls fn(sub_block, row_shift, prev_view) for the rows of step p whose
// previous state is row `carried` of the previous step and for those that
// start from the initial state (only in the reverse direction of packed input).
template <typename T, typename F>
void for_prev_segments(const frame::Steps& s, int64_t p, const Block& blk, const T* prev_rows, int64_t prev_col,
                       int64_t prev_ld, const T* initial, int64_t init_ld, const F& fn) {
  const int64_t carried = s.carried(p);
  const int64_t n = blk.rows;
  if (carried > 0) {
    Block sub = blk;
    sub.rows = carried;
    fn(sub, int64_t(0), cview(prev_rows + s.prev_offset(p) * prev_ld + prev_col, prev_ld));
  }
  if (carried < n) {
    Block sub = blk;
    sub.rows = n - carried;
    fn(sub, carried, cview(initial + carried * init_ld, init_ld));
  }
}

}  // namespace cpu
}  // namespace fusedrnn
