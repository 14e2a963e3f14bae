// The pointwise part of one backward step, shared by both strategies: for
// rows [0, n) of step p and a range of hidden units, the pass of pointwise.h
// that the cell takes, its arguments wired to the rows of BackwardBuffers.
#pragma once

#include "buffers.h"
#include "fusedrnn/cell.h"
#include "fusedrnn/sequence_frame.h"
#include "view.h"

namespace fusedrnn {
namespace cpu {

// The pointwise backward of step p for rows [0, n) and units [u0, u1); the
// results go to the row-major buffers of BackwardBuffers.  The gradient of
// the step's output is dh_a + dh_b (dout and the carried dh, or with a
// projection dm and zeros).
template <typename T>
void step_backward_pointwise(const Cell& cell, const frame::Steps& s, int64_t p, BackwardBuffers& bb,
                             const Block& blk, View<const T> dh_a, View<const T> dh_b);

// GRU reset_before, once dk = da_n W_hn is known: the r gate's gradient (dA_x's
// r block) and dh_direct += dk*r.  Row b, unit u of dk at dk_rows.row(b)[u].
template <typename T>
void step_backward_reset_gate(const frame::Steps& s, int64_t p, BackwardBuffers& bb, const Block& blk,
                              View<const T> dk_rows);

}  // namespace cpu
}  // namespace fusedrnn
