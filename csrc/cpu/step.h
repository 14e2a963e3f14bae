// One time step of a cell, the latency path of the `step_forward` op
// (op_schema.h): what a decoder's LSTMCell / GRUCell / RNNCell call runs.
//
// A cell step through the sequence op (T = 1) paid for the sequence's
// machinery, dozens of ATen calls (dtype conversions, clones, row gathers,
// the packing of W_ih and W_hh), more than the step's arithmetic at the sizes
// decoders use (benchmarks/RESULTS.md, "Per-call overhead").  Here the step is
// the products of row_product.h straight from the weights as they lie, into a
// scratch buffer, then the sequence kernels' own pointwise pass (pointwise.h),
// writing the same workspace layout, so the sequence backward op serves the
// step's backward unchanged (csrc/step_autograd.cpp).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "fusedrnn/cell.h"

namespace fusedrnn {
namespace cpu {

// Whether step_forward's own kernel runs this call: float32, contiguous; the
// op hands anything else to the sequence op with T = 1.
bool step_kernel_runs(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                      const at::Tensor& w_peep);

// (h', c' (undefined outside LSTM), workspace [B, W] (undefined without for_backward)) from checked,
// float32, contiguous x [B, I], h [B, H], c [B, H] (LSTM) and the weights (biases and peepholes optional).
std::tuple<at::Tensor, at::Tensor, at::Tensor> step_kernel(const Cell& cell, const at::Tensor& x,
                                                            const at::Tensor& h, const at::Tensor& c,
                                                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                            const at::Tensor& b_ih, const at::Tensor& b_hh,
                                                            const at::Tensor& w_peep, bool for_backward);

// Whether step_backward's own kernel runs this call: the cells whose step has
// no peepholes and no dependent product (LSTM, GRU reset_after, RNN), float32
// as step_kernel_runs says; the op hands anything else to the sequence
// backward op with T = 1.
bool step_backward_kernel_runs(const Cell& cell, const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const at::Tensor& w_peep);

struct StepGradients {
  at::Tensor dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh;  // undefined where absent or not asked for
};

// The gradients of one step from those of h' and c' (LSTM), the step's inputs,
// its output h' and the workspace step_kernel kept (all checked, float32,
// contiguous).  dh and dc always; dx with need_dx; the weights' with need_dweights.
StepGradients step_backward_kernel(const Cell& cell, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                   const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                   const at::Tensor& w_ih, const at::Tensor& w_hh, bool has_b_ih, bool has_b_hh,
                                   const at::Tensor& h_new, const at::Tensor& workspace, bool need_dx,
                                   bool need_dweights);

}  // namespace cpu
}  // namespace fusedrnn
