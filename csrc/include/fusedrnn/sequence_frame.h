// The frame of one layer-direction's sequence, the same for every backend
// that runs a whole sequence per call (the CPU kernels, csrc/cpu, and the
// CUDA ones, csrc/cuda/sequence.cpp): a layer's tensors, which rows each
// step owns and the order the steps run in, where each row's previous state
// lies, each sequence's last row, the input projection with its folded bias,
// and the weight gradients after the backward's recurrence.  As
// fusedrnn/layer.py (Steps, previous_states, weight_gradients).
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
// w_extra: the layer-normalised cells' gains and shift (Cell::extra_blocks()).
struct LayerWeights {
  at::Tensor w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, w_extra;
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

// Each row's state from before its step: rows [N, D] -> [N, D] (layer.previous_states).
// On the CPU the rows are copied as maximal runs (contiguous in source and
// destination: two copies for padded input, where a gather would index every
// row); on a GPU one gather (index_select) is one launch where the runs of
// packed input would be one copy per step.
inline at::Tensor previous_rows(const at::Tensor& rows, const at::Tensor& initial, const Steps& s) {
  if (!rows.is_cpu()) return at::cat({rows, initial}).index_select(0, previous_index(s, rows.device()));
  at::Tensor prev = at::empty({s.rows, rows.size(1)}, rows.options());
  struct Run {
    const at::Tensor* src;
    int64_t src0, dst0, n;
  } run{nullptr, 0, 0, 0};
  const auto flush = [&] {
    if (run.n > 0) prev.narrow(0, run.dst0, run.n).copy_(run.src->narrow(0, run.src0, run.n));
  };
  const auto add = [&](const at::Tensor& src, int64_t src0, int64_t dst0, int64_t n) {
    if (n == 0) return;
    if (run.src == &src && run.src0 + run.n == src0 && run.dst0 + run.n == dst0) {  // forward direction
      run.n += n;
      return;
    }
    if (run.src == &src && src0 + n == run.src0 && dst0 + n == run.dst0) {  // reverse direction
      run = Run{&src, src0, dst0, run.n + n};
      return;
    }
    flush();
    run = Run{&src, src0, dst0, n};
  };
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t], carried = s.carried(p);
    add(rows, s.prev_offset(p), s.offset[t], carried);
    add(initial, carried, s.offset[t] + carried, n - carried);
  }
  flush();
  return prev;
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

// Each sequence's final state, rows last_rows(s) of `out` (s.rows > 0): one contiguous block, copied,
// where every sequence ends at the same step (padded input, either direction), without building an index
// tensor (a short call's fixed cost: a decoder's layer calls of a few steps).
inline at::Tensor final_rows(const at::Tensor& out, const Steps& s) {
  const int64_t last = s.order[s.count() - 1];
  if (s.size[last] == s.batch) return out.narrow(0, s.offset[last], s.batch).clone();
  return out.index_select(0, last_rows(s, out.device()));
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

// A backward's results in the compute dtype: dx undefined without need_dx,
// the weights' undefined without need_dweights or where the weight is absent.
struct Gradients {
  at::Tensor dx, dh0, dc0;
  LayerWeights dw;
};

// The backward op's result list (op_schema.h): every gradient in x's dtype,
// dx in x's shape, an empty tensor for each one there is not; a tenth, that of
// w_extra, for a cell with extra weights.
inline std::vector<at::Tensor> op_result(const Gradients& r, const at::Tensor& x, const Cell& cell = Cell()) {
  const auto back = [&](const at::Tensor& t) { return t.defined() ? t.to(x.scalar_type()) : x.new_empty({0}); };
  std::vector<at::Tensor> result{r.dx.defined() ? back(r.dx.reshape(x.sizes())) : x.new_empty({0}),
                                 back(r.dh0),
                                 back(r.dc0),
                                 back(r.dw.w_ih),
                                 back(r.dw.w_hh),
                                 back(r.dw.b_ih),
                                 back(r.dw.b_hh),
                                 back(r.dw.w_peep),
                                 back(r.dw.w_proj)};
  if (cell.extra_blocks() > 0) result.push_back(back(r.dw.w_extra));
  return result;
}

// What the backward's recurrence leaves for the products after it: [N, *]
// rows in the compute dtype.
struct GateGradients {
  at::Tensor dA_x;      // [N, G*H] pre-activation gradients, input side
  at::Tensor dA_h;      // [N, G*H] hidden side: its own buffer for GRU reset_after only, else dA_x
  at::Tensor dH_total;  // LSTM with a projection: [N, P] each output row's whole gradient (dout + dh)
  at::Tensor dpeep;     // LSTM with peepholes: [3H] if the recurrence summed it already, else undefined
};

// The weight gradients after the recurrence, each a product (or sum) over all
// steps at once (layer.weight_gradients): x [N, I], out [N, P], ws [N, W] and
// h0/c0 in the compute dtype.  `mm(a, b)` is the device's matrix product (the
// CPU's keeps every result independent of the thread count, csrc/cpu/dense_product.h).
// dW_hh of GRU reset_before: its n rows multiply k = r*h_prev (workspace
// block 3), not h_prev; IndRNN's du = sum over rows of dA * h_prev; sLSTM's block-diagonal dW_hh per head.  The peephole gradient sums da_i*c_prev, da_f*c_prev
// and da_o*c' over the rows (c' is workspace block 4).
template <typename MatMul>
LayerWeights weight_gradients(const Cell& cell, const LayerWeights& w, const Steps& s, const at::Tensor& x,
                              const at::Tensor& out, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& ws,
                              const GateGradients& d, const MatMul& mm) {
  const int64_t H = w.w_hh.size(0) / cell.gates();
  LayerWeights dw;
  dw.w_ih = mm(d.dA_x.t(), x);
  const at::Tensor h_prev = previous_rows(out, h0, s);
  if (cell.diagonal()) {  // u * h element-wise (IndRNN): du sums dA * h_prev over the rows
    dw.w_hh = (d.dA_h * h_prev).sum(0);
  } else if (cell.block_diagonal() && w.w_hh.size(1) == H) {
    dw.w_hh = mm(d.dA_h.t(), h_prev);  // one head: R is dense
  } else if (cell.block_diagonal()) {
    // sLSTM's heads (layer.block_diagonal_weight_gradient): w_hh [G*H, D] holds each head's block, so head
    // k's rows of every gate are the gradients of those pre-activations against the head's slice of h_prev:
    // one product per head, its columns of dA gathered first (one copy) so that each is a single large GEMM
    const int64_t G = cell.gates(), D = w.w_hh.size(1), heads = H / D, N = h_prev.size(0);
    const at::Tensor by_head = d.dA_h.view({N, G, heads, D}).permute({2, 0, 1, 3}).contiguous();  // [heads, N, G, D]
    dw.w_hh = at::empty_like(w.w_hh);
    const at::Tensor blocks = dw.w_hh.view({G, heads, D, D});
    for (int64_t k = 0; k < heads; ++k) {
      const at::Tensor g_k = mm(by_head[k].view({N, G * D}).t(), h_prev.narrow(1, k * D, D));  // [G*D, D]
      blocks.select(1, k).copy_(g_k.view({G, D, D}));
    }
  } else if (cell.family == Family::gru && !cell.reset_after) {
    dw.w_hh = at::cat({mm(d.dA_h.narrow(1, 0, 2 * H).t(), h_prev), mm(d.dA_h.narrow(1, 2 * H, H).t(),
                                                                       ws.narrow(1, 3 * H, H))});
  } else {
    dw.w_hh = mm(d.dA_h.t(), h_prev);
  }
  if (w.b_ih.defined()) dw.b_ih = d.dA_x.sum(0);
  if (w.b_hh.defined()) {
    // one buffer serves both sides outside GRU reset_after: sum it once
    const bool same = d.dA_h.is_same(d.dA_x) && dw.b_ih.defined();
    dw.b_hh = same ? dw.b_ih.clone() : d.dA_h.sum(0);
  }
  if (w.w_peep.defined()) {
    if (d.dpeep.defined()) {
      dw.w_peep = d.dpeep;
    } else {
      const at::Tensor c = ws.narrow(1, 4 * H, H), c_prev = previous_rows(c, c0, s);
      dw.w_peep = at::cat({(d.dA_x.narrow(1, 0, H) * c_prev).sum(0), (d.dA_x.narrow(1, H, H) * c_prev).sum(0),
                           (d.dA_x.narrow(1, 3 * H, H) * c).sum(0)});
    }
  }
  if (w.w_proj.defined()) {  // h = m W_proj^T with m = o * tanh(c')
    const at::Tensor m = ws.narrow(1, 3 * H, H) * ws.narrow(1, 4 * H, H).tanh();
    dw.w_proj = mm(d.dH_total.t(), m);
  }
  return dw;
}

}  // namespace frame
}  // namespace fusedrnn
