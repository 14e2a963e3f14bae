// sLSTM on the CPU (Cell::block_diagonal(): xLSTM's scalar-memory LSTM as FlashRNN computes it;
// equations in fusedrnn/cells.py, docs/design.md sections 4 and 7).
//
// R is block-diagonal by heads (w_hh [4H, D], D = H/heads, holds each head's block), so the fused
// strategies' packed product over all of h does not apply; this is the same idea per head:
//  * x W_ih^T + b_ih for all steps at once, as one GEMM (dense_product.h: linear); b_hh is added in the
//    pass, after the product, in the reference's order;
//  * one parallel region for the whole sequence: each thread owns a fixed range of work items, an item
//    being one panel of L units (one SIMD vector, recurrent_product.h) of one head, all four gates.  Per
//    step, for each of its items, the thread multiplies the head's slice of every row's previous h by the
//    item's packed rows of the head's block (recurrent_product.h's micro-kernel in float32) and applies
//    the stabilised exponential gating and the state update to the tile while it is in L1
//    (slstm_pointwise.h), writing out, the states (c, n, m, in place: each unit has one owner) and the
//    workspace [ĩ, f̃, z, o, c', n', m'].  The previous h is read from the previous step's output rows
//    (or h0: rows.h), never overwritten within a step, so one barrier per step suffices;
//  * backward: the same region backwards in time; per step and item, dh_prev = dA R for the item's
//    units (the transposed product, from the four gates' dA of the head: four terms of the
//    micro-kernel) of the later step, then the pointwise derivative of this step
//    (fusedrnn.reference._slstm_step_backward's operations in its order), one barrier per step;
//  * after it dX, dW_ih, the biases and the block-diagonal dW_hh (per head and gate) as products over
//    all steps (frame::weight_gradients).
// An item's tile and pass are computed by the same code whichever thread owns it, and no sum is split
// over threads: the same bits with any thread count (tests/test_thread_count.py).  Every strategy name
// runs this.  float32 and float64 (a plain loop over the same panels in place of the micro-kernel),
// packed sequences, both directions.
#pragma once

#include "sequence.h"

namespace fusedrnn {
namespace cpu {

// As sequence_forward, for sLSTM: c0 and c_n hold the states c, n, m concatenated, [B, 3H].
ForwardOut slstm_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                  const LayerWeights& w, const Steps& s, bool poison, bool for_backward);

// As sequence_backward, for sLSTM (grad_cn and dc0: those of c, n, m, [B, 3H]).
BackwardOut slstm_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                    const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                                    const at::Tensor& c0, const LayerWeights& w, const Steps& s,
                                    const at::Tensor& out, const at::Tensor& workspace, bool poison, bool need_dx,
                                    bool need_dweights);

}  // namespace cpu
}  // namespace fusedrnn
