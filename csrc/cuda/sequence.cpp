#include "sequence.h"

#include <limits>
#include <vector>

namespace fusedrnn {
namespace cuda {

DType storage_dtype(at::ScalarType t) {
  if (t == at::kHalf) return DType::f16;
  if (t == at::kBFloat16) return DType::bf16;
  return DType::f32;
}

Choice choose_forward(const Cell& cell, const ProblemSizes& n) { return choose(&plan_persistent_forward, cell, n); }
Choice choose_backward(const Cell& cell, const ProblemSizes& n) { return choose(&plan_persistent_backward, cell, n); }

namespace {

using checks::defined;
using checks::Geometry;
using frame::last_rows;
using frame::Steps;
using Weights = frame::LayerWeights;  // in float32 or the storage dtype, as named

void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn_C: CUDA kernel ", kernel, " failed: ", cudaGetErrorString(err));
}

// The per-step bookkeeping of the persistent kernels, on the device, in processing order.
struct StepArrays {
  at::Tensor rows, offset, carried, prev_offset;
  StepArrays(const Steps& s, const at::Device& device) {
    std::vector<int32_t> r, c;
    std::vector<int64_t> o, po;
    for (int64_t p = 0; p < s.count(); ++p) {
      r.push_back(static_cast<int32_t>(s.size[s.order[p]]));
      o.push_back(s.offset[s.order[p]]);
      c.push_back(static_cast<int32_t>(s.carried(p)));
      po.push_back(s.prev_offset(p));
    }
    const auto i32 = at::TensorOptions().dtype(at::kInt), i64 = at::TensorOptions().dtype(at::kLong);
    rows = at::tensor(r, i32).to(device), carried = at::tensor(c, i32).to(device);
    offset = at::tensor(o, i64).to(device), prev_offset = at::tensor(po, i64).to(device);
  }
};

// ---------------------------------------------------------------------------
// buffers and float32 copies
// ---------------------------------------------------------------------------

at::Tensor new_buffer(at::IntArrayRef shape, const at::TensorOptions& options, bool poison) {
  at::Tensor t = at::empty(shape, options);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

at::Tensor f32(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }

// out = a b (cuBLAS on the current stream), out being a view into a preallocated buffer.
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The weights in float32 (the compute dtype); undefined where absent.
Weights float_weights(const Weights& w) {
  return Weights{f32(w.w_ih), f32(w.w_hh), f32(w.b_ih), f32(w.b_hh), f32(w.w_peep), f32(w.w_proj), f32(w.w_extra)};
}

at::Tensor hidden_bias_n(const Weights& w, int64_t H) {
  return w.b_hh.defined() ? w.b_hh.narrow(0, 2 * H, H).contiguous() : at::Tensor();
}

ProblemSizes problem_sizes(const Call& c, const at::Tensor& x, bool projection) {
  return ProblemSizes{c.s.batch, c.g.H, c.g.Hout, c.s.count(), projection, storage_dtype(x.scalar_type()), c.device};
}

// ===========================================================================
// forward
// ===========================================================================

struct ForwardState {
  at::Tensor xp, out, ws, h_n, c_n;  // out, ws: storage dtype; the rest float32
};

void per_step_forward(const Geometry& g, const Steps& s, const Weights& w, const at::Tensor& h0f,
                      const at::Tensor& c0f, ForwardState& f, DType dtype, cudaStream_t stream, bool poison,
                      bool keep_workspace) {
  const Cell& cell = g.cell;
  const int64_t H = g.H, Hout = g.Hout, GH = g.G * H, W = cell.workspace_blocks() * H, B = s.batch;
  const auto fopt = h0f.options();
  const bool reset_before = cell.family == Family::gru && !cell.reset_after;
  const bool proj = w.w_proj.defined();
  at::Tensor h = h0f.clone();
  at::Tensor c = cell.family == Family::lstm ? c0f.clone() : at::Tensor();
  at::Tensor hp = new_buffer({B, reset_before ? 2 * H : GH}, fopt, poison);
  at::Tensor hp_n = reset_before ? new_buffer({B, H}, fopt, poison) : at::Tensor();
  at::Tensor rzk = reset_before ? new_buffer({B, 3 * H}, fopt, poison) : at::Tensor();
  at::Tensor m = proj ? new_buffer({B, H}, fopt, poison) : at::Tensor();
  const at::Tensor w_rec = reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh;
  const at::Tensor b_hn = cell.family == Family::gru ? hidden_bias_n(w, H) : at::Tensor();
  const size_t elem = f.out.element_size();
  char* out = static_cast<char*>(f.out.data_ptr());
  char* ws = static_cast<char*>(f.ws.data_ptr());
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    const int64_t ws_off = keep_workspace ? off : 0;  // inference: every step's rows in one [B, W] buffer
    at::Tensor hp_rows = hp.narrow(0, 0, n);
    mm_into(hp_rows, h.narrow(0, 0, n), w_rec.t());
    if (cell.family == Family::lstm) {
      LstmForwardStep a;
      a.n = n, a.H = H;
      a.xp = ptr<float>(f.xp) + off * GH, a.xp_ld = GH;
      a.hp = ptr<float>(hp), a.hp_ld = GH;
      a.c = ptr<float>(c);
      a.peep = ptr<float>(w.w_peep);
      a.ws = ws + ws_off * W * elem, a.ws_ld = W;
      if (proj) {
        a.m = ptr<float>(m), a.m_ld = H;
      } else {
        a.m = ptr<float>(h), a.m_ld = H;
        a.out = out + off * Hout * elem, a.out_ld = Hout;
      }
      check_launch(lstm_forward_step(dtype, a, stream), "lstm_forward_step");
      if (proj) {  // h' = m W_proj^T, in float32 for the state, rounded once for the output
        mm_into(h.narrow(0, 0, n), m.narrow(0, 0, n), w.w_proj.t());
        f.out.narrow(0, off, n).copy_(h.narrow(0, 0, n));
      }
    } else if (cell.family == Family::gru) {
      GruForwardStep a;
      a.n = n, a.H = H;
      a.xp = ptr<float>(f.xp) + off * GH, a.xp_ld = GH;
      a.hp = ptr<float>(hp), a.hp_ld = hp.size(1);
      a.b_hn = ptr<float>(b_hn);
      a.h = ptr<float>(h), a.h_ld = H;
      a.ws = ws + ws_off * W * elem, a.ws_ld = W;
      a.out = out + off * H * elem, a.out_ld = H;
      if (cell.reset_after) {
        check_launch(gru_forward_step_reset_after(dtype, a, stream), "gru_forward_step_reset_after");
      } else {
        a.rzk = ptr<float>(rzk), a.rzk_ld = 3 * H;
        check_launch(gru_forward_step_gates(dtype, a, stream), "gru_forward_step_gates");
        mm_into(hp_n.narrow(0, 0, n), rzk.narrow(0, 0, n).narrow(1, 2 * H, H), w.w_hh.narrow(0, 2 * H, H).t());
        a.hp = ptr<float>(hp_n), a.hp_ld = H;
        check_launch(gru_forward_step_state(dtype, a, stream), "gru_forward_step_state");
      }
    } else {
      RnnForwardStep a;
      a.n = n, a.H = H, a.relu = cell.relu;
      a.xp = ptr<float>(f.xp) + off * GH, a.xp_ld = GH;
      a.hp = ptr<float>(hp), a.hp_ld = GH;
      a.h = ptr<float>(h), a.h_ld = H;
      a.out = out + off * H * elem, a.out_ld = H;
      check_launch(rnn_forward_step(dtype, a, stream), "rnn_forward_step");
    }
  }
  f.h_n = h;
  f.c_n = c;
}

// `stored`: the weights in the storage dtype, which the persistent kernels keep on chip.
void persistent_forward(const Geometry& g, const Steps& s, const Choice& choice, const Weights& w,
                        const Weights& stored, const at::Tensor& h0f, const at::Tensor& c0f, ForwardState& f,
                        DType dtype, cudaStream_t stream, bool poison, bool keep_workspace) {
  const int64_t H = g.H, P = g.Hout, B = s.batch;
  const auto device = h0f.device();
  const StepArrays steps(s, device);
  at::Tensor exchange = new_buffer({2, B, P}, h0f.options(), poison);
  exchange[0].copy_(h0f);
  const bool two_products = choice.cell == PersistentCell::gru_reset_before ||
                            choice.cell == PersistentCell::lstm_projection;
  const at::Tensor mid_exchange = two_products ? new_buffer({B, H}, h0f.options(), poison) : at::Tensor();
  const bool lstm = g.cell.family == Family::lstm;
  at::Tensor c_n = lstm ? new_buffer({B, H}, h0f.options(), poison) : at::Tensor();
  const at::Tensor b_hn = g.cell.family == Family::gru ? hidden_bias_n(w, H) : at::Tensor();
  PersistentForward a;
  a.B = B, a.H = H, a.P = P, a.steps = s.count();
  a.step_rows = ptr<int32_t>(steps.rows);
  a.step_offset = ptr<int64_t>(steps.offset);
  a.xp = ptr<float>(f.xp);
  a.w_hh = stored.w_hh.data_ptr();
  a.w_proj = stored.w_proj.defined() ? stored.w_proj.data_ptr() : nullptr;
  a.b_hn = ptr<float>(b_hn);
  a.peep = ptr<float>(w.w_peep);
  a.h0 = ptr<float>(h0f);
  a.c0 = lstm ? ptr<float>(c0f) : nullptr;
  a.h_exchange = ptr<float>(exchange);
  a.mid_exchange = ptr<float>(mid_exchange);
  a.out = f.out.data_ptr();
  a.ws = f.ws.data_ptr();
  a.keep_workspace = keep_workspace;
  a.c_n = ptr<float>(c_n);
  check_launch(cuda::persistent_forward(choice.cell, dtype, choice.plan, a, stream), "persistent_forward");
  // each sequence's final h is its last output row (the same float32 value, rounded once)
  f.h_n = f.out.index_select(0, last_rows(s, device)).to(at::kFloat);
  f.c_n = c_n;
}

// IndRNN: no product per step, one launch for the sequence (diagonal.cu).
void diagonal_forward(const Geometry& g, const Steps& s, const Weights& w, const at::Tensor& h0f, ForwardState& f,
                      DType dtype, cudaStream_t stream, bool poison) {
  const StepArrays steps(s, h0f.device());
  f.h_n = new_buffer({s.batch, g.H}, h0f.options(), poison);
  DiagonalForward a;
  a.B = s.batch, a.H = g.H, a.steps = s.count(), a.relu = g.cell.relu;
  a.step_rows = ptr<int32_t>(steps.rows);
  a.step_offset = ptr<int64_t>(steps.offset);
  a.xp = ptr<float>(f.xp);
  a.u = ptr<float>(w.w_hh);
  a.h0 = ptr<float>(h0f);
  a.out = f.out.data_ptr();
  a.h_n = ptr<float>(f.h_n);
  check_launch(cuda::diagonal_forward(dtype, a, stream), "diagonal_forward");
}

// ===========================================================================
// backward (fusedrnn.reference.sequence_backward's structure)
// ===========================================================================

// What the backward's recurrence leaves for the weight gradients.
struct BackwardState {
  at::Tensor dA_x, dA_h;  // [N, G*H] gate gradients, input and hidden side (differ for GRU reset_after only)
  at::Tensor dh, dc;      // float32 gradients of h0, c0
  at::Tensor dH_total;    // projection: [N, P] dout + dh, each output row's gradient
};

// The buffers both strategies fill.
BackwardState backward_buffers(const Geometry& g, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
                               const at::TensorOptions& fopt, bool proj, bool poison) {
  const Cell& cell = g.cell;
  BackwardState b;
  b.dA_x = new_buffer({g.N, g.G * g.H}, fopt, poison);
  b.dA_h = (cell.family == Family::gru && cell.reset_after) ? new_buffer({g.N, g.G * g.H}, fopt, poison) : b.dA_x;
  b.dh = f32(grad_hn).clone();
  b.dc = cell.family == Family::lstm ? f32(grad_cn).clone() : at::Tensor();
  b.dH_total = proj ? new_buffer({g.N, g.Hout}, fopt, poison) : at::Tensor();
  return b;
}

void persistent_backward(const Geometry& g, const Steps& s, const Choice& choice, const Weights& w,
                         const Weights& stored, const at::Tensor& grad_out,
                         const at::Tensor& out, const at::Tensor& workspace, const at::Tensor& h0f,
                         const at::Tensor& c0f, BackwardState& b, DType dtype, cudaStream_t stream) {
  const StepArrays steps(s, h0f.device());
  const at::Tensor dh_n = b.dh.clone(), dc_n = b.dc.defined() ? b.dc.clone() : at::Tensor();
  PersistentBackward a;
  a.B = s.batch, a.H = g.H, a.P = g.Hout, a.steps = s.count(), a.k_chunk = choice.plan.k_chunk;
  a.step_rows = ptr<int32_t>(steps.rows);
  a.step_offset = ptr<int64_t>(steps.offset);
  a.step_carried = ptr<int32_t>(steps.carried);
  a.step_prev_offset = ptr<int64_t>(steps.prev_offset);
  a.dout = grad_out.data_ptr();
  a.out = out.data_ptr();
  a.ws = workspace.data_ptr();
  a.w_hh = stored.w_hh.data_ptr();
  a.w_proj = stored.w_proj.defined() ? stored.w_proj.data_ptr() : nullptr;
  a.peep = ptr<float>(w.w_peep);
  a.h0 = ptr<float>(h0f);
  a.c0 = ptr<float>(c0f);
  a.dh_n = ptr<float>(dh_n);
  a.dc_n = ptr<float>(dc_n);
  a.dA_x = ptr<float>(b.dA_x);
  a.dA_h = ptr<float>(b.dA_h);
  a.dH = ptr<float>(b.dH_total);
  a.dh0 = ptr<float>(b.dh);
  a.dc0 = ptr<float>(b.dc);
  check_launch(cuda::persistent_backward(choice.cell, dtype, choice.plan, a, stream), "persistent_backward");
}

void diagonal_backward(const Geometry& g, const Steps& s, const Weights& w, const at::Tensor& grad_out,
                       const at::Tensor& out, BackwardState& b, DType dtype, cudaStream_t stream) {
  const StepArrays steps(s, out.device());
  const at::Tensor dh_n = b.dh.clone();
  DiagonalBackward a;
  a.B = s.batch, a.H = g.H, a.steps = s.count(), a.relu = g.cell.relu;
  a.step_rows = ptr<int32_t>(steps.rows);
  a.step_offset = ptr<int64_t>(steps.offset);
  a.dout = grad_out.data_ptr();
  a.out = out.data_ptr();
  a.u = ptr<float>(w.w_hh);
  a.dh_n = ptr<float>(dh_n);
  a.dA = ptr<float>(b.dA_x);
  a.dh0 = ptr<float>(b.dh);
  check_launch(cuda::diagonal_backward(dtype, a, stream), "diagonal_backward");
}

void per_step_backward(const Geometry& g, const Steps& s, const Weights& w, const at::Tensor& grad_out,
                       const at::Tensor& out, const at::Tensor& workspace, const at::Tensor& h0f,
                       const at::Tensor& c0f, BackwardState& b, DType dtype, cudaStream_t stream, bool poison) {
  const Cell& cell = g.cell;
  const int64_t H = g.H, Hout = g.Hout, GH = g.G * H, W = cell.workspace_blocks() * H;
  const auto fopt = h0f.options();
  const bool proj = w.w_proj.defined();
  const size_t elem = out.element_size();
  const char* dout = static_cast<const char*>(grad_out.data_ptr());
  const char* outp = static_cast<const char*>(out.data_ptr());
  const char* ws = static_cast<const char*>(workspace.data_ptr());
  const at::Tensor dout_rows = grad_out.reshape({g.N, Hout});
  at::Tensor &dA_x = b.dA_x, &dA_h = b.dA_h, &dh = b.dh, &dc = b.dc, &dH_total = b.dH_total;
  at::Tensor dh_direct = cell.family == Family::gru ? new_buffer({g.B, H}, fopt, poison) : at::Tensor();
  at::Tensor dk = (cell.family == Family::gru && !cell.reset_after) ? new_buffer({g.B, H}, fopt, poison) : at::Tensor();
  at::Tensor dm = proj ? new_buffer({g.B, H}, fopt, poison) : at::Tensor();

  for (int64_t p = s.count() - 1; p >= 0; --p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    const int64_t carried = s.carried(p), prev = s.prev_offset(p);
    at::Tensor dh_rows = dh.narrow(0, 0, n);
    at::Tensor dA_x_rows = dA_x.narrow(0, off, n);
    if (cell.family == Family::lstm) {
      LstmBackwardStep a;
      a.n = n, a.H = H;
      if (proj) {  // dm = (dout + dh) W_proj: the gradient of o*tanh(c')
        at::Tensor total = dH_total.narrow(0, off, n);
        at::add_out(total, dout_rows.narrow(0, off, n), dh_rows);
        mm_into(dm.narrow(0, 0, n), total, w.w_proj);
        a.dh = ptr<float>(dm), a.dh_ld = H;
      } else {
        a.dout = dout + off * Hout * elem, a.dout_ld = Hout;
        a.dh = ptr<float>(dh), a.dh_ld = Hout;
      }
      a.dc = ptr<float>(dc);
      a.ws = ws + off * W * elem, a.ws_ld = W;
      a.c_prev.rows = ws + (prev * W + 4 * H) * elem, a.c_prev.rows_ld = W, a.c_prev.carried = carried;
      a.c_prev.initial = ptr<float>(c0f), a.c_prev.initial_ld = H;
      a.peep = ptr<float>(w.w_peep);
      a.dA = ptr<float>(dA_x) + off * GH, a.dA_ld = GH;
      check_launch(lstm_backward_step(dtype, a, stream), "lstm_backward_step");
      mm_into(dh_rows, dA_x_rows, w.w_hh);
    } else if (cell.family == Family::gru) {
      GruBackwardStep a;
      a.n = n, a.H = H;
      a.dout = dout + off * H * elem, a.dout_ld = H;
      a.dh = ptr<float>(dh), a.dh_ld = H;
      a.ws = ws + off * W * elem, a.ws_ld = W;
      a.h_prev.rows = outp + prev * H * elem, a.h_prev.rows_ld = H, a.h_prev.carried = carried;
      a.h_prev.initial = ptr<float>(h0f), a.h_prev.initial_ld = H;
      a.dA_x = ptr<float>(dA_x) + off * GH, a.dA_x_ld = GH;
      a.dh_direct = ptr<float>(dh_direct);
      const at::Tensor direct = dh_direct.narrow(0, 0, n);
      if (cell.reset_after) {
        a.dA_h = ptr<float>(dA_h) + off * GH, a.dA_h_ld = GH;
        check_launch(gru_backward_step_reset_after(dtype, a, stream), "gru_backward_step_reset_after");
        at::addmm_out(dh_rows, direct, dA_h.narrow(0, off, n), w.w_hh);
      } else {
        check_launch(gru_backward_step_zn(dtype, a, stream), "gru_backward_step_zn");
        // dk = da_n W_hn (the gradient of k = r*h), then the r gradient and dh_prev += dk*r
        mm_into(dk.narrow(0, 0, n), dA_x_rows.narrow(1, 2 * H, H), w.w_hh.narrow(0, 2 * H, H));
        a.dk = ptr<float>(dk), a.dk_ld = H;
        check_launch(gru_backward_step_r(dtype, a, stream), "gru_backward_step_r");
        at::addmm_out(dh_rows, direct, dA_x_rows.narrow(1, 0, 2 * H), w.w_hh.narrow(0, 0, 2 * H));
      }
    } else {
      RnnBackwardStep a;
      a.n = n, a.H = H, a.relu = cell.relu;
      a.dout = dout + off * H * elem, a.dout_ld = H;
      a.dh = ptr<float>(dh), a.dh_ld = H;
      a.out = outp + off * H * elem, a.out_ld = H;
      a.dA = ptr<float>(dA_x) + off * GH, a.dA_ld = GH;
      check_launch(rnn_backward_step(dtype, a, stream), "rnn_backward_step");
      mm_into(dh_rows, dA_x_rows, w.w_hh);
    }
  }
}

}  // namespace

ForwardOut sequence_forward(const Call& c, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const Weights& stored, bool for_backward) {
  const Geometry& g = c.g;
  const Steps& s = c.s;
  const DType dtype = storage_dtype(x.scalar_type());
  const Weights w = float_weights(stored);
  const at::Tensor h0f = f32(h0);
  const at::Tensor c0f = g.cell.family == Family::lstm ? f32(c0) : at::Tensor();
  const int64_t W = g.cell.workspace_blocks() * g.H;

  ForwardState f;
  f.xp = frame::input_projection(g.cell, x.reshape({g.N, g.I}).to(at::kFloat), w, g.H);
  f.out = new_buffer({g.N, g.Hout}, x.options(), c.poison);
  f.ws = new_buffer({for_backward ? g.N : s.batch, W}, x.options(), c.poison);
  if (g.cell.diagonal()) {  // one kernel, whatever the strategy asked for
    diagonal_forward(g, s, w, h0f, f, dtype, c.stream, c.poison);
    return ForwardOut{f.out, f.ws, f.h_n, f.c_n};
  }
  const Choice choice =
      resolve_strategy(c.requested, &plan_persistent_forward, g.cell, problem_sizes(c, x, w.w_proj.defined()));
  if (choice.strategy == Strategy::persistent) {
    persistent_forward(g, s, choice, w, stored, h0f, c0f, f, dtype, c.stream, c.poison, for_backward);
  } else {
    per_step_forward(g, s, w, h0f, c0f, f, dtype, c.stream, c.poison, for_backward);
  }
  return ForwardOut{f.out, f.ws, f.h_n, f.c_n};
}

BackwardOut sequence_backward(const Call& c, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const Weights& stored, const at::Tensor& out,
                              const at::Tensor& workspace, bool need_dx, bool need_dweights) {
  const Geometry& g = c.g;
  const Steps& s = c.s;
  const DType dtype = storage_dtype(x.scalar_type());
  const Weights w = float_weights(stored);
  const bool proj = w.w_proj.defined();
  const at::Tensor h0f = f32(h0);
  const at::Tensor c0f = g.cell.family == Family::lstm ? f32(c0) : at::Tensor();

  BackwardState b = backward_buffers(g, grad_hn, grad_cn, x.options().dtype(at::kFloat), proj, c.poison);
  if (g.cell.diagonal()) {  // one kernel, whatever the strategy asked for
    diagonal_backward(g, s, w, grad_out, out, b, dtype, c.stream);
  } else {
    const Choice choice =
        resolve_strategy(c.requested, &plan_persistent_backward, g.cell, problem_sizes(c, x, proj));
    if (choice.strategy == Strategy::persistent) {
      persistent_backward(g, s, choice, w, stored, grad_out, out, workspace, h0f, c0f, b, dtype, c.stream);
    } else {
      per_step_backward(g, s, w, grad_out, out, workspace, h0f, c0f, b, dtype, c.stream, c.poison);
    }
  }

  // input and weight gradients: single products over all steps, each skipped where nobody asked for it
  BackwardOut r;
  r.dh0 = b.dh;
  r.dc0 = b.dc;
  if (need_dx) r.dx = at::mm(b.dA_x, w.w_ih);
  if (!need_dweights) return r;
  const int64_t W = g.cell.workspace_blocks() * g.H;
  const frame::GateGradients d{b.dA_x, b.dA_h, b.dH_total, at::Tensor()};
  r.dw = frame::weight_gradients(g.cell, w, s, x.reshape({g.N, g.I}).to(at::kFloat),
                                 out.reshape({g.N, g.Hout}).to(at::kFloat), h0f, c0f,
                                 workspace.reshape({g.N, W}).to(at::kFloat), d,
                                 [](const at::Tensor& a, const at::Tensor& b) { return at::mm(a, b); });
  return r;
}

}  // namespace cuda
}  // namespace fusedrnn
