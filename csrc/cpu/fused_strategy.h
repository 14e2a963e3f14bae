// The fused strategies (strategy.h), float32 only, every cell:
//  * fused: one parallel region for the whole sequence: each thread owns a
//           fixed set of hidden-unit blocks, keeps the packed W_hh rows of its
//           units (all gates) in its own cache, computes their product with
//           the micro-kernel of recurrent_product.h and applies the gate math
//           on the tile while it is in L1; one barrier per step.  The backward
//           does the same with W_hh^T (its units are the columns of W_hh).
//           The micro-kernel reads h_prev (dA in the backward) where the
//           previous step wrote it, row-major: no transpose between steps.
//  * folded: fused, LSTM and RNN, with x_t W_ih^T as a second term of the
//           same register tile (W_ih packed like W_hh), so no Xp buffer.
//
// A step is a short list of phases (fused_phases.h), each a product and the
// pointwise pass on its result, over the thread's own blocks, with a barrier
// between phases.  Two dependent products per step take two phases: GRU
// reset_before (r, z first; then the n gate's product of k = r*h, and in the
// backward dk = da_n W_hn after the z, n pass) and LSTMP (proj_size): in the
// forward, after the gate pass and a barrier, each thread projects its share
// of the P output units (h = m W_hr^T, the same micro-kernel over packed
// W_hr), then the step's barrier; the backward mirrors it (dout + dh over the
// P units, a barrier, dm = that times W_hr over the H units, the pointwise
// pass, the step's barrier).
#pragma once

#include <ATen/ATen.h>

#include "buffers.h"
#include "fusedrnn/cell.h"
#include "fusedrnn/sequence_frame.h"

namespace fusedrnn {
namespace cpu {

// The forward recurrence: f.out, f.c_state, f.ws from x (rows [N, I]) and h0.
// `fold`: the input projection inside the per-step product (Strategy::folded).
void fused_forward(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s, ForwardBuffers& f,
                   const at::Tensor& x, const at::Tensor& h0, bool fold);

// The backward recurrence (folded or not, the same): bb's dA rows, dh_state, dc_state.
void fused_backward(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s, BackwardBuffers& bb);

}  // namespace cpu
}  // namespace fusedrnn
