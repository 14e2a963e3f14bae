// Forward and backward of one layer-direction over a whole sequence, in the
// compute dtype (float or double), on checked, contiguous tensors.
// The op entry points (ops.cpp) check arguments and convert dtypes.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "fusedrnn/cell.h"
#include "fusedrnn/sequence_frame.h"
#include "strategy.h"

namespace fusedrnn {
namespace cpu {

using fusedrnn::Cell;
using fusedrnn::Family;
using frame::LayerWeights;
using frame::Steps;

struct ForwardOut {
  at::Tensor out, h_n, c_n, workspace;  // c_n undefined without a cell state (sLSTM's: c, n, m)
};

using BackwardOut = frame::Gradients;

// Without `for_backward` (inference) no workspace is kept: `workspace` is undefined.
// `zoneout_mask`: undefined, or the [N, Hout] rows of op_schema.h's zoneout_mask (a cell with
// Cell::runs_zoneout()): each step's output is m*h_new + (1-m)*h_prev; the backward takes the same mask.
ForwardOut sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const LayerWeights& w, const Steps& steps, Strategy strategy, bool poison,
                            bool for_backward, const at::Tensor& zoneout_mask = at::Tensor());

BackwardOut sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const LayerWeights& w, const Steps& steps,
                              const at::Tensor& out, const at::Tensor& workspace, Strategy strategy, bool poison,
                              bool need_dx = true, bool need_dweights = true,
                              const at::Tensor& zoneout_mask = at::Tensor());

std::string describe();  // ISA and thread count, for reports

}  // namespace cpu
}  // namespace fusedrnn
