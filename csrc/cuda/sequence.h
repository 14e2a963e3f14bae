// Forward and backward through time for one layer-direction on the kernel
// device: the buffers of a call, the per_step or persistent recurrence
// (strategy.h), and the products over all steps around it.  The arguments are
// checked already (ops.cpp); the tensors are x's device and dtype (the storage
// dtype), contiguous.
//
// Numerics (as fusedrnn.reference): float16/bfloat16 are computed in float32
// (weights, states, pre-activations, gradients between steps); only `out` and
// `workspace` are stored in x's dtype, rounded once.
#pragma once

#include <ATen/ATen.h>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/sequence_frame.h"
#include "strategy.h"

namespace fusedrnn {
namespace cuda {

// One checked call: its geometry, steps, strategy asked for, and where the kernels run.
struct Call {
  const checks::Geometry& g;
  const frame::Steps& s;
  Strategy requested;
  cudaStream_t stream;
  int device;   // the ordinal (0 in the emulation build)
  bool poison;  // fill every output and scratch buffer with NaN first (tests)
};

struct ForwardOut {
  at::Tensor out, workspace;  // [N, P], [N, W] (or [B, W] without for_backward), storage dtype
  at::Tensor h_n, c_n;        // float32 [B, P] and (LSTM) [B, H]
};

// `w`: the layer's weights as given (storage dtype).  Without `for_backward`
// the steps share one [B, W] workspace (nothing reads it after its step).
ForwardOut sequence_forward(const Call& c, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const frame::LayerWeights& w, bool for_backward);

using BackwardOut = frame::Gradients;  // float32

BackwardOut sequence_backward(const Call& c, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const frame::LayerWeights& w, const at::Tensor& out,
                              const at::Tensor& workspace, bool need_dx, bool need_dweights);

// What "auto" runs for these sizes (the forward_strategy / backward_strategy ops).
Choice choose_forward(const Cell& cell, const ProblemSizes& n);
Choice choose_backward(const Cell& cell, const ProblemSizes& n);

DType storage_dtype(at::ScalarType t);

}  // namespace cuda
}  // namespace fusedrnn
