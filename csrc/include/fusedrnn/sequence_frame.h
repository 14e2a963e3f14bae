// The frame of one layer-direction's sequence, the same for every backend
// that runs a whole sequence per call (the CPU kernels, csrc/cpu, and the
// CUDA wrapper, csrc/cuda/cuda_ops.cpp): a layer's tensors, which rows each
// step owns and the order the steps run in, where each row's previous state
// lies, each sequence's last row, and the input projection with its folded
// bias.  As fusedrnn.reference (Steps, previous_states).
//
// ATen only and header-only, so it builds into either extension; the tensors
// it returns are on the device asked for (index tensors are built on the host).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "fusedrnn/cell.h"

namespace fusedrnn {
namespace frame {

// One layer-direction's weights in the compute dtype; undefined where absent.
struct LayerWeights {
  at::Tensor w_ih, w_hh, b_ih, b_hh, w_peep, w_proj;
};

// Which rows each step owns and the order the steps run in (as
// fusedrnn.reference.Steps): padded input is packed rows of equal sizes.
struct Steps {
  std::vector<int64_t> size, offset, order;
  int64_t batch = 0, rows = 0;

  Steps(const std::vector<int64_t>& sizes, bool reverse) : size(sizes) {
    offset.resize(size.size());
    for (size_t t = 0; t < size.size(); ++t) {
      offset[t] = rows;
      rows += size[t];
    }
    batch = size.empty() ? 0 : size[0];
    order.resize(size.size());
    for (size_t i = 0; i < size.size(); ++i)
      order[i] = reverse ? static_cast<int64_t>(size.size() - 1 - i) : static_cast<int64_t>(i);
  }
  int64_t count() const { return static_cast<int64_t>(size.size()); }
  // Rows [0, carried) of the step at processing position p continue the rows
  // of position p-1 (first row prev_offset); the others start from the
  // initial state (only in the reverse direction of packed input).  At the
  // first position nothing is carried (prev_offset 0, never read).
  int64_t carried(int64_t p) const { return p == 0 ? 0 : std::min(size[order[p]], size[order[p - 1]]); }
  int64_t prev_offset(int64_t p) const { return p == 0 ? 0 : offset[order[p - 1]]; }
};

// For every row, the row of cat([rows, initial]) holding the state it started from.
inline at::Tensor previous_index(const Steps& s, const at::Device& device = at::kCPU) {
  std::vector<int64_t> index(s.rows);
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], c = s.carried(p), prev = s.prev_offset(p);
    for (int64_t b = 0; b < s.size[t]; ++b) index[s.offset[t] + b] = b < c ? prev + b : s.rows + b;
  }
  return at::tensor(index, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Each sequence's last row in processing order (its final state).
inline at::Tensor last_rows(const Steps& s, const at::Device& device = at::kCPU) {
  std::vector<int64_t> last(s.batch, 0);
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p];
    for (int64_t b = 0; b < s.size[t]; ++b) last[b] = s.offset[t] + b;
  }
  return at::tensor(last, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Bias folded into the input projection: b_ih + b_hh, except the GRU n-gate's
// hidden bias, which sits inside r*(W_hn h + b_hn) (reset_after) or after the
// n-gate product (reset_before) and is added by the kernels.  Undefined
// without biases.
inline at::Tensor folded_bias(const Cell& cell, const LayerWeights& w, int64_t H) {
  if (!w.b_ih.defined() && !w.b_hh.defined()) return at::Tensor();
  at::Tensor bias = w.b_ih.defined() ? w.b_ih.clone() : at::zeros_like(w.b_hh);
  if (w.b_hh.defined()) {
    const int64_t folded = cell.family == Family::gru ? 2 * H : bias.size(0);
    bias.narrow(0, 0, folded).add_(w.b_hh.narrow(0, 0, folded));
  }
  return bias;
}

// Xp = X W_ih^T + the folded bias, for all rows at once, through ATen (cuBLAS
// on CUDA).  The CPU kernels run the same product through oneDNN instead
// (csrc/cpu/dense_product.h: linear).
inline at::Tensor input_projection(const Cell& cell, const at::Tensor& x_rows, const LayerWeights& w, int64_t H) {
  const at::Tensor bias = folded_bias(cell, w, H);
  return bias.defined() ? at::addmm(bias, x_rows, w.w_ih.t()) : at::mm(x_rows, w.w_ih.t());
}

}  // namespace frame
}  // namespace fusedrnn
