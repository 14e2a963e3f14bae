// The layer-normalised LSTM and GRU on the CPU (Cell::layer_norm(): haste's
// LayerNormLSTM / LayerNormGRU; equations in fusedrnn/cells.py, docs/design.md
// sections 3, 4 and 7).
//
// Each pre-activation row is normalised over all of its G*H units, so the
// fused strategies (threads owning unit blocks of every row) would need a
// reduction across threads per step; this is the gemm strategy instead, with
// whole rows per thread:
//  * x W_ih^T for all steps at once, as one GEMM;
//  * per step: h W_hh^T as one GEMM (fixed_mm_out, on every thread), then ONE
//    pass over the step's rows, split over threads by row
//    (layer_norm_pointwise.h), that normalises the row's two products (γ_ih,
//    γ_hh, + the biases), applies the gates and the state update (and the
//    LSTM's normalisation of c'), and writes out, the states and the
//    workspace ([i, f, g, o, c'] / [r, z, n, k], as every backend's);
//  * backward: the two products the statistics came from are recomputed over
//    all steps (one GEMM each: the workspace holds no statistics), then per
//    step one row pass (the gates' backward, both normalisations' backward
//    with their row sums inside the thread, each row's terms kept for later)
//    and dh_prev = dHa W_hh; after the loop a column pass (a thread owns
//    columns and sums them over all rows in order) gives dXa in place over
//    x W_ih^T and the gains', shift's and biases' gradients; dX, dW_ih, dW_hh
//    as single products.
// Every strategy name runs this.  float32 and float64, packed sequences, both
// directions.
#pragma once

#include "sequence.h"

namespace fusedrnn {
namespace cpu {

// As sequence_forward, for a layer-normalised cell (w.w_extra holds its gains and shift); with zoneout
// (`zoneout_mask` defined) each row's output is blended with its h_prev after the row pass (the
// workspace is the same: the backward reads the gates, never h').
ForwardOut layer_norm_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0,
                                       const at::Tensor& c0, const LayerWeights& w, const Steps& s, bool poison,
                                       bool for_backward, const at::Tensor& zoneout_mask);

// As sequence_backward, for a layer-normalised cell; dw.w_extra is the gradient of w_extra.
BackwardOut layer_norm_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                         const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                                         const at::Tensor& c0, const LayerWeights& w, const Steps& s,
                                         const at::Tensor& out, const at::Tensor& workspace, bool poison,
                                         bool need_dx, bool need_dweights, const at::Tensor& zoneout_mask);

}  // namespace cpu
}  // namespace fusedrnn
