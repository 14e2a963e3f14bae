// Forward and backward of one layer-direction over a whole sequence, in the
// compute dtype (float or double), on checked, contiguous tensors.
// The op entry points (ops.cpp) check arguments and convert dtypes.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "fusedrnn/cell.h"

namespace fusedrnn {
namespace cpu {

using fusedrnn::Cell;
using fusedrnn::Family;

// How the per-step recurrent product runs (see sequence.cpp): `gemm` (ATen's
// BLAS per step), `fused` (packed micro-kernel; input projection as GEMMs over
// chunks of steps) or `folded` (fused, with the input projection inside the
// per-step product; LSTM and RNN).  The backward is the same for both fused ones.
enum class Strategy { automatic, gemm, fused, folded };

struct LayerTensors {
  at::Tensor w_ih, w_hh, b_ih, b_hh, w_peep, w_proj;  // undefined where absent
};

// Which rows each step owns and the order the steps run in (as
// fusedrnn.reference.Steps): padded input is packed rows of equal sizes.
struct Steps {
  std::vector<int64_t> size, offset, order;
  int64_t batch = 0, rows = 0;
  Steps(const std::vector<int64_t>& sizes, bool reverse);
  int64_t count() const { return static_cast<int64_t>(size.size()); }
};

struct ForwardOut {
  at::Tensor out, h_n, c_n, workspace;  // c_n undefined outside LSTM
};

struct BackwardOut {
  at::Tensor dx, dh0, dc0;
  LayerTensors dw;
};

// Without `for_backward` (inference) no workspace is kept: `workspace` is undefined.
ForwardOut sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const LayerTensors& w, const Steps& steps, Strategy strategy, bool poison,
                            bool for_backward);

BackwardOut sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const LayerTensors& w, const Steps& steps,
                              const at::Tensor& out, const at::Tensor& workspace, Strategy strategy, bool poison,
                              bool need_dx = true, bool need_dweights = true);

// The strategy `automatic` picks for these sizes (exposed for tests and benchmarks).
Strategy choose_strategy(const Cell& cell, const LayerTensors& w, const Steps& steps, at::ScalarType dtype);

std::string describe();  // ISA and thread count, for reports

}  // namespace cpu
}  // namespace fusedrnn
