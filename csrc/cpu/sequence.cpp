// Forward and backward through time for one layer-direction: the buffers of
// the call, the strategy that runs the recurrence, and the products over all
// steps around it.
//
// Work split (docs/design.md section 3):
//  * the input projection Xp = X W_ih^T + b_ih (+ b_hh where it can be folded
//    in) as large GEMMs (dense_product.h): all steps at once for the gemm
//    strategy, a ~2 MiB chunk of steps at a time for the fused one (so that
//    the gate pass reads Xp from cache); the folded strategy instead adds
//    x_t W_ih^T to each step's product (fold_input_projection in strategy.cpp
//    says when);
//  * per step, the recurrent product and ONE fused pointwise pass;
//  * backward: per step one fused pointwise pass and one product with W_hh,
//    then dW_ih, dW_hh, dX and the biases as single GEMMs over all steps.
//  * every result is bitwise the same with any number of threads: work is
//    split by output element, never a sum over threads (the GEMMs included,
//    dense_product.h); tests/test_thread_count.py.
//
// The files of the CPU kernels:
//  * strategy.h           which strategy runs the per-step product, on how many threads
//  * gemm_strategy.h      gemm: ATen's BLAS per step, then the pointwise pass
//  * fused_strategy.h     fused, folded: the packed micro-kernel and the pass per
//                         unit block, as phases (fused_phases.h; fused_forward.cpp,
//                         fused_backward.cpp)
//  * pointwise.h          the passes; pointwise_dispatch.h compiles them per ISA
//  * backward_pointwise.h a backward step's pass, for both strategies
//  * rows.h               where a step's rows find their previous state (in the kernels)
//  * buffers.h            the tensors a call works on
//  * recurrent_product.h, dense_product.h, parallel.h: the micro-kernel, the
//                         large GEMMs, the parallel region
//  * diagonal_recurrence.h IndRNN (element-wise recurrent weight): no per-step
//                         product, so no strategy; its own region and passes
//  * layer_norm_recurrence.h the layer-normalised LSTM and GRU: the gemm strategy
//                         with whole rows per thread (layer_norm_pointwise.h)
//  * slstm_recurrence.h   sLSTM (block-diagonal w_hh by heads): its own region, a
//                         product per head and panel fused with its gating
//                         (slstm_pointwise.h)
//  * fusedrnn/sequence_frame.h (shared with csrc/cuda): the steps' rows and
//                         order, the previous and last rows, the folded input
//                         bias, the weight gradients after the recurrence
#include "sequence.h"

#include <sstream>

#include "buffers.h"
#include "dense_product.h"
#include "diagonal_recurrence.h"
#include "layer_norm_recurrence.h"
#include "slstm_recurrence.h"
#include "fused_strategy.h"
#include "gemm_strategy.h"
#include "parallel.h"
#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

namespace {

at::Tensor hidden_bias_n(const LayerWeights& w, int64_t H, const at::TensorOptions& opts) {
  return w.b_hh.defined() ? w.b_hh.narrow(0, 2 * H, H).contiguous() : at::zeros({H}, opts);
}

}  // namespace

std::string describe() {
  std::ostringstream s;
  s << "isa=" << isa_name(best_isa()) << " threads=" << max_threads() << " linear=" << linear_library();
  return s.str();
}

ForwardOut sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const LayerWeights& w, const Steps& s, Strategy strategy, bool poison,
                            bool for_backward, const at::Tensor& zoneout_mask) {
  // no product per step
  if (cell.diagonal()) return diagonal_sequence_forward(cell, x, h0, w, s, for_backward, zoneout_mask);
  if (cell.layer_norm()) {
    return layer_norm_sequence_forward(cell, x, h0, c0, w, s, poison, for_backward, zoneout_mask);
  }
  if (cell.block_diagonal()) return slstm_sequence_forward(cell, x, h0, c0, w, s, poison, for_backward);
  ForwardBuffers f;
  f.keep_workspace = for_backward;
  f.G = cell.gates();
  f.H = w.w_hh.size(0) / f.G;
  f.Hout = w.w_hh.size(1);
  f.mask = zoneout_mask;
  f.W = cell.workspace_blocks(zoneout_mask.defined()) * f.H;
  const int64_t ws_rows = for_backward ? s.rows : s.batch;
  if (poison) {  // the kernels must write every element they hand back
    f.out = empty_like_rows(x, {s.rows, f.Hout}, true);
    f.ws = empty_like_rows(x, {ws_rows, f.W}, true);
  } else {
    f.out = at::empty({s.rows, f.Hout}, x.options());
    f.ws = at::empty({ws_rows, f.W}, x.options());
  }
  f.h_state = h0.clone();
  if (cell.family == Family::lstm) {
    f.c_state = c0.clone();
    f.peep = w.w_peep.defined() ? w.w_peep : at::zeros({3 * f.H}, x.options());
  }
  if (cell.family == Family::gru) f.b_hn = hidden_bias_n(w, f.H, x.options());
  strategy = resolve_strategy(strategy, cell, w, s, x.scalar_type());
  ForwardOut r;
  if (strategy != Strategy::gemm) {
    fused_forward(cell, w, s, f, x, h0, strategy == Strategy::folded);
    if (s.rows > 0) r.h_n = frame::final_rows(f.out, s);
  } else {
    f.xp = linear(x, w.w_ih, frame::folded_bias(cell, w, f.H));
    gemm_forward(cell, w, s, f, poison);
    r.h_n = f.h_state;
  }
  if (s.rows == 0) r.h_n = h0.clone();
  r.out = f.out;
  r.c_n = f.c_state;
  r.workspace = for_backward ? f.ws : at::Tensor();
  return r;
}

BackwardOut sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const LayerWeights& w, const Steps& s,
                              const at::Tensor& out, const at::Tensor& workspace, Strategy strategy, bool poison,
                              bool need_dx, bool need_dweights, const at::Tensor& zoneout_mask) {
  if (cell.diagonal()) {
    return diagonal_sequence_backward(cell, grad_out, grad_hn, x, h0, w, s, out, poison, need_dx, need_dweights,
                                      zoneout_mask, workspace);
  }
  if (cell.layer_norm()) {
    return layer_norm_sequence_backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, w, s, out, workspace, poison,
                                        need_dx, need_dweights, zoneout_mask);
  }
  if (cell.block_diagonal()) {
    return slstm_sequence_backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, w, s, out, workspace, poison,
                                   need_dx, need_dweights);
  }
  BackwardBuffers bb;
  bb.G = cell.gates();
  bb.H = w.w_hh.size(0) / bb.G;
  bb.Hout = w.w_hh.size(1);
  bb.W = cell.workspace_blocks(zoneout_mask.defined()) * bb.H;
  const int64_t H = bb.H, GH = bb.G * H;
  if (zoneout_mask.defined()) {
    bb.mask = zoneout_mask;
    bb.dh_keep = empty_like_rows(x, {s.batch, bb.Hout}, poison);
  }
  bb.dout = grad_out;
  bb.ws = workspace;
  bb.out = out;
  bb.h0 = h0;
  bb.c0 = c0;
  bb.dA_x = empty_like_rows(x, {s.rows, GH}, poison);
  bb.dA_h = (cell.family == Family::gru && cell.reset_after) ? empty_like_rows(x, {s.rows, GH}, poison) : bb.dA_x;
  bb.dh_state = grad_hn.clone();
  if (cell.family == Family::lstm) {
    bb.dc_state = grad_cn.clone();
    bb.peephole = w.w_peep.defined();
    bb.peep = bb.peephole ? w.w_peep : at::zeros({3 * H}, x.options());
    bb.dpeep = at::zeros({3 * H}, x.options());
    if (w.w_proj.defined()) bb.dH_total = empty_like_rows(x, {s.rows, bb.Hout}, poison);
  }
  if (cell.family == Family::gru) bb.dh_direct = empty_like_rows(x, {s.batch, H}, poison);

  // folded or not, the fused backward is the same
  if (resolve_strategy(strategy, cell, w, s, x.scalar_type()) != Strategy::gemm) {
    fused_backward(cell, w, s, bb);
  } else {
    gemm_backward(cell, w, s, bb, poison);
  }

  // input and weight gradients: single products over all steps, each skipped
  // where nobody asked for it (dX of a first layer, the weights of a frozen one)
  BackwardOut r;
  r.dh0 = bb.dh_state;
  r.dc0 = bb.dc_state;
  if (need_dx) r.dx = linear(bb.dA_x, w.w_ih.t(), at::Tensor());
  if (!need_dweights) return r;
  const frame::GateGradients d{bb.dA_x, bb.dA_h, bb.dH_total, bb.peephole ? bb.dpeep : at::Tensor()};
  r.dw = frame::weight_gradients(cell, w, s, x, out, h0, c0, workspace, d,
                                 [](const at::Tensor& a, const at::Tensor& b) { return fixed_mm(a, b); });
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
