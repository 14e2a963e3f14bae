// IndRNN on the CPU (Cell::diagonal(): h' = act(W_ih x + b_ih + u*h + b_hh),
// u = w_hh [H] element-wise; docs/design.md sections 3, 4 and 7).
//
// The hidden side has no product, so the strategies of strategy.h (how a
// per-step recurrent product runs) do not apply: every strategy name runs this.
// The input projection is one GEMM over all steps (dense_product.h) with both
// biases folded; then, since a unit depends on nothing but its own past, each
// thread takes a fixed range of units through the whole sequence: one
// parallel region, no barrier per step, one vectorised pass per step and
// segment of rows (pointwise.h, per ISA through pointwise_dispatch.h).  The
// backward is the same region backwards in time, then dX and dW_ih as single
// products over all steps.
#pragma once

#include "sequence.h"

namespace fusedrnn {
namespace cpu {

// As sequence_forward, for a diagonal cell (float or double x, in the compute dtype).  With zoneout
// (`zoneout_mask` defined) the workspace keeps h' [N, H] for the backward.
ForwardOut diagonal_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0,
                                     const LayerWeights& w, const Steps& s, bool for_backward,
                                     const at::Tensor& zoneout_mask);

// As sequence_backward, for a diagonal cell: there is no workspace (act' comes from `out`), except
// with zoneout, where act' comes from the workspace's h'.
BackwardOut diagonal_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                       const at::Tensor& x, const at::Tensor& h0, const LayerWeights& w,
                                       const Steps& s, const at::Tensor& out, bool poison, bool need_dx,
                                       bool need_dweights, const at::Tensor& zoneout_mask,
                                       const at::Tensor& workspace);

}  // namespace cpu
}  // namespace fusedrnn
