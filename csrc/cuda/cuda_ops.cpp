// Dispatcher ops of the CUDA backend, namespace fusedrnn_C (CUDA dispatch key):
//
//   cuda_forward(family, mode, x, h0, c0?, w_ih, w_hh, b_ih?, b_hh?, w_peep?, w_proj?,
//                batch_sizes?, reverse, strategy="auto", poison=False)
//       -> (out, h_n, c_n, workspace)            c_n is empty outside LSTM
//   cuda_backward(family, mode, grad_out, grad_hn, grad_cn?, x, h0, c0?, w_ih, w_hh,
//                 b_ih?, b_hh?, w_peep?, w_proj?, batch_sizes?, reverse, out, workspace,
//                 poison=False, strategy="auto")
//       -> [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_proj]   empty where absent
//   cuda_forward_strategy(family, mode, x, h0, w_hh, w_proj?, steps) -> str
//   cuda_backward_strategy(family, mode, x, h0, w_hh, w_proj?, steps) -> str
//       the forward strategy "auto" picks: "persistent", or "per_step: <why not persistent>"
//
// Shapes and layouts: fusedrnn/backends/base.py; batch_sizes is a CPU int64
// tensor (as in PackedSequence), every other tensor is on one CUDA device.
// This file is the thin ATen side of the kernels in csrc/cuda/*.cu: it checks
// every argument (TORCH_CHECK: a RuntimeError naming it), runs the sequence
// loop, does the products with cuBLAS through ATen (at::mm_out / addmm_out on
// the current stream) and turns any kernel launch error into a RuntimeError.
//
// Numerics (as fusedrnn.reference): float16/bfloat16 inputs are computed in
// float32 (weights, states, pre-activations, gradients between steps); only
// `out`, `workspace` and the returned tensors are in x's dtype.
//
// Strategies (csrc/cuda/README.md): `per_step` (one cuBLAS product and one
// fused pointwise kernel per step) and `persistent` (one cooperative kernel
// for the whole sequence), for the forward and the backward alike.
// `strategy` forces one; `poison` fills every output and scratch buffer with
// NaN first (tests).
//
// The CPU emulation build (FUSEDRNN_CUDA_EMULATION, csrc/emulation) compiles
// this same file: the kernels then run on CPU tensors, the products are ATen's
// CPU ones, and the ops are registered for the CPU dispatch key.  What differs
// is confined to the "kernel device" section below.
#include <ATen/ATen.h>
#include <torch/library.h>
#ifndef FUSEDRNN_CUDA_EMULATION
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/sequence_frame.h"
#include "launchers.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------
// the kernel device: the CUDA device of x, or the CPU in the emulation build
// ---------------------------------------------------------------------------

#ifdef FUSEDRNN_CUDA_EMULATION
constexpr const char* kDeviceWanted = "a CPU tensor (the CUDA emulation build runs on CPU tensors)";
bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }

// No device to select, no stream: the emulated kernels run on the calling thread.
class KernelDevice {
 public:
  explicit KernelDevice(const at::Device&) {}
  cudaStream_t stream() const { return nullptr; }
  int ordinal() const { return 0; }  // the emulated device
};
#define FUSEDRNN_KERNEL_DISPATCH_KEY CPU
#else
constexpr const char* kDeviceWanted = "a CUDA tensor";
bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }

// x's device made current for the call, and its current stream.
class KernelDevice {
 public:
  explicit KernelDevice(const at::Device& device) : guard_(device), device_(device) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(device_.index()).stream(); }
  int ordinal() const { return device_.index(); }

 private:
  c10::cuda::CUDAGuard guard_;
  at::Device device_;
};
#define FUSEDRNN_KERNEL_DISPATCH_KEY CUDA
#endif

// ---------------------------------------------------------------------------
// cells, strategies, argument checks
// ---------------------------------------------------------------------------

using checks::check_tensor;
using checks::defined;
using checks::Geometry;

enum class Strategy { automatic, per_step, persistent };

Strategy parse_strategy(const std::string& s) {
  if (s == "auto") return Strategy::automatic;
  if (s == "per_step") return Strategy::per_step;
  TORCH_CHECK(s == "persistent", "fusedrnn_C: strategy must be 'auto', 'per_step' or 'persistent', got '", s, "'");
  return Strategy::persistent;
}

void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn_C: CUDA kernel ", kernel, " failed: ", cudaGetErrorString(err));
}

DType storage_dtype(at::ScalarType t) {
  if (t == at::kHalf) return DType::f16;
  if (t == at::kBFloat16) return DType::bf16;
  return DType::f32;
}

// The shared checks (csrc/include/fusedrnn/op_checks.h), after the CUDA-specific ones on x.
Geometry check_call(const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
                    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                    const c10::optional<at::Tensor>& batch_sizes) {
  TORCH_CHECK(on_kernel_device(x), "fusedrnn_C: x must be ", kDeviceWanted, ", got device ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "fusedrnn_C: the CUDA kernels take float32, float16 or bfloat16, got ", dt);
  return checks::check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes);
}

// ---------------------------------------------------------------------------
// row bookkeeping (as fusedrnn.reference.Steps / previous_states)
// ---------------------------------------------------------------------------

// Steps, previous_index, last_rows: fusedrnn/sequence_frame.h (shared with csrc/cpu)
using frame::last_rows;
using frame::previous_index;
using frame::Steps;

at::Tensor previous_rows(const at::Tensor& rows, const at::Tensor& initial, const at::Tensor& index) {
  return at::cat({rows, initial}).index_select(0, index);
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
at::Tensor f32(const c10::optional<at::Tensor>& t) { return defined(t) ? f32(*t) : at::Tensor(); }

// out = a b (cuBLAS on the current stream), out being a view into a preallocated buffer.
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The weights in float32 (the compute dtype); undefined where absent.
using Weights = frame::LayerWeights;

Weights float_weights(const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                      const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_peep,
                      const c10::optional<at::Tensor>& w_proj) {
  return Weights{f32(w_ih), f32(w_hh), f32(b_ih), f32(b_hh), f32(w_peep), f32(w_proj)};
}

// Xp = X W_ih^T + b_ih + b_hh (but the GRU n gate's b_hn): fusedrnn/sequence_frame.h
using frame::input_projection;

at::Tensor hidden_bias_n(const Weights& w, int64_t H) {
  return w.b_hh.defined() ? w.b_hh.narrow(0, 2 * H, H).contiguous() : at::Tensor();
}

// ---------------------------------------------------------------------------
// strategy choice
// ---------------------------------------------------------------------------

// The persistent kernel of a cell (every cell has one).
PersistentCell persistent_cell(const Cell& cell, bool proj) {
  if (cell.family == Family::lstm) return proj ? PersistentCell::lstm_projection : PersistentCell::lstm;
  if (cell.family == Family::gru) return cell.reset_after ? PersistentCell::gru_reset_after
                                                          : PersistentCell::gru_reset_before;
  return cell.relu ? PersistentCell::rnn_relu : PersistentCell::rnn_tanh;
}

struct Choice {
  Strategy strategy = Strategy::per_step;
  PersistentCell cell = PersistentCell::lstm;
  PersistentPlan plan;
  std::string why_not_persistent;
};

using Planner = PersistentPlan (*)(PersistentCell, DType, int64_t, int64_t, int64_t, int);

// The rule (README), for the forward (plan_persistent_forward) and the
// backward (plan_persistent_backward): persistent when the sequence has at
// least 2 steps and the planner says the weight slices fit in shared memory
// and the cooperative grid fits on the device.  P: the size of h (the
// projection size, else H).
Choice choose(Planner planner, const Cell& cell, bool proj, at::ScalarType dtype, int64_t B, int64_t H, int64_t P,
              int64_t steps, int device) {
  Choice c;
  c.cell = persistent_cell(cell, proj);
  c.plan = planner(c.cell, storage_dtype(dtype), B, H, P, device);
  if (!c.plan.ok) {
    c.why_not_persistent = c.plan.reason;
    return c;
  }
  if (steps < 2) {
    c.why_not_persistent = "a single step: nothing to keep on chip between steps";
    return c;
  }
  c.strategy = Strategy::persistent;
  return c;
}

// `strategy` as requested: auto's choice, or the persistent one forced (an
// error where it cannot run, with the planner's reason).
Choice resolve_strategy(Strategy requested, Planner planner, const Geometry& g, bool proj, at::ScalarType dtype,
                        const Steps& s, int device) {
  Choice choice;
  if (requested == Strategy::per_step || s.count() == 0) return choice;
  choice = choose(planner, g.cell, proj, dtype, s.batch, g.H, g.Hout, s.count(), device);
  if (requested == Strategy::persistent) {
    TORCH_CHECK(choice.plan.ok, "fusedrnn_C: the persistent strategy cannot run this call: ",
                choice.why_not_persistent);
    choice.strategy = Strategy::persistent;
  }
  return choice;
}

// ===========================================================================
// forward
// ===========================================================================

struct ForwardState {
  at::Tensor xp, out, ws, h_n, c_n;  // out, ws: storage dtype; the rest float32
};

void per_step_forward(const Geometry& g, const Steps& s, const Weights& w, const at::Tensor& h0f,
                      const at::Tensor& c0f, ForwardState& f, DType dtype, cudaStream_t stream, bool poison) {
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
    at::Tensor hp_rows = hp.narrow(0, 0, n);
    mm_into(hp_rows, h.narrow(0, 0, n), w_rec.t());
    if (cell.family == Family::lstm) {
      LstmForwardStep a;
      a.n = n, a.H = H;
      a.xp = ptr<float>(f.xp) + off * GH, a.xp_ld = GH;
      a.hp = ptr<float>(hp), a.hp_ld = GH;
      a.c = ptr<float>(c);
      a.peep = ptr<float>(w.w_peep);
      a.ws = ws + off * W * elem, a.ws_ld = W;
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
      a.ws = ws + off * W * elem, a.ws_ld = W;
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

void persistent_forward(const Geometry& g, const Steps& s, const Choice& choice, const Weights& w,
                        const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj, const at::Tensor& h0f,
                        const at::Tensor& c0f, ForwardState& f, DType dtype, cudaStream_t stream, bool poison) {
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
  a.w_hh = w_hh.data_ptr();
  a.w_proj = defined(w_proj) ? w_proj->data_ptr() : nullptr;
  a.b_hn = ptr<float>(b_hn);
  a.peep = ptr<float>(w.w_peep);
  a.h0 = ptr<float>(h0f);
  a.c0 = lstm ? ptr<float>(c0f) : nullptr;
  a.h_exchange = ptr<float>(exchange);
  a.mid_exchange = ptr<float>(mid_exchange);
  a.out = f.out.data_ptr();
  a.ws = f.ws.data_ptr();
  a.c_n = ptr<float>(c_n);
  check_launch(cuda::persistent_forward(choice.cell, dtype, choice.plan, a, stream), "persistent_forward");
  // each sequence's final h is its last output row (the same float32 value, rounded once)
  f.h_n = f.out.index_select(0, last_rows(s, device)).to(at::kFloat);
  f.c_n = c_n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
    const c10::optional<at::Tensor>& batch_sizes, bool reverse, const std::string& strategy, bool poison) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes);
  const Strategy requested = parse_strategy(strategy);
  const KernelDevice device(x.device());
  const cudaStream_t stream = device.stream();
  const Steps s(g.sizes, reverse);
  const DType dtype = storage_dtype(x.scalar_type());
  const Weights w = float_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj);
  const at::Tensor h0f = f32(h0);
  const at::Tensor c0f = g.cell.family == Family::lstm ? f32(*c0) : at::Tensor();
  const int64_t W = g.cell.workspace_blocks() * g.H;

  ForwardState f;
  f.xp = input_projection(g.cell, x.reshape({g.N, g.I}).to(at::kFloat), w, g.H);
  f.out = new_buffer({g.N, g.Hout}, x.options(), poison);
  f.ws = new_buffer({g.N, W}, x.options(), poison);

  const Choice choice = resolve_strategy(requested, &plan_persistent_forward, g, w.w_proj.defined(),
                                         x.scalar_type(), s, device.ordinal());
  if (choice.strategy == Strategy::persistent) {
    persistent_forward(g, s, choice, w, w_hh, w_proj, h0f, c0f, f, dtype, stream, poison);
  } else {
    per_step_forward(g, s, w, h0f, c0f, f, dtype, stream, poison);
  }

  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> out_shape = lead, ws_shape = lead;
  out_shape.push_back(g.Hout);
  ws_shape.push_back(W);
  const at::Tensor c_n = f.c_n.defined() ? f.c_n.to(x.scalar_type()) : x.new_empty({0});
  return {f.out.reshape(out_shape), f.h_n.to(x.scalar_type()), c_n, f.ws.reshape(ws_shape)};
}

// What "auto" picks for the forward (plan_persistent_forward) or the backward.
std::string chosen_strategy(Planner planner, const std::string& family, const std::string& mode,
                            const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_hh,
                            const c10::optional<at::Tensor>& w_proj, int64_t steps) {
  const Cell cell = checks::parse_cell(family, mode);
  TORCH_CHECK(on_kernel_device(x), "fusedrnn_C: x must be ", kDeviceWanted, ", got device ", x.device());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % cell.gates() == 0, "fusedrnn_C: w_hh must be [G*hidden, hidden]");
  TORCH_CHECK(h0.dim() == 2, "fusedrnn_C: h0 must be 2-D [batch, hidden], got ", h0.dim(), "-D");
  const KernelDevice device(x.device());
  const Choice c = choose(planner, cell, defined(w_proj), x.scalar_type(), h0.size(0), w_hh.size(0) / cell.gates(),
                          h0.size(1), steps, device.ordinal());
  return c.strategy == Strategy::persistent ? std::string("persistent") : "per_step: " + c.why_not_persistent;
}

std::string forward_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                             const at::Tensor& h0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                             int64_t steps) {
  return chosen_strategy(&plan_persistent_forward, family, mode, x, h0, w_hh, w_proj, steps);
}

std::string backward_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                              const at::Tensor& h0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                              int64_t steps) {
  return chosen_strategy(&plan_persistent_backward, family, mode, x, h0, w_hh, w_proj, steps);
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
BackwardState backward_buffers(const Geometry& g, const at::Tensor& grad_hn, const c10::optional<at::Tensor>& grad_cn,
                               const at::TensorOptions& fopt, bool proj, bool poison) {
  const Cell& cell = g.cell;
  BackwardState b;
  b.dA_x = new_buffer({g.N, g.G * g.H}, fopt, poison);
  b.dA_h = (cell.family == Family::gru && cell.reset_after) ? new_buffer({g.N, g.G * g.H}, fopt, poison) : b.dA_x;
  b.dh = f32(grad_hn).clone();
  b.dc = cell.family == Family::lstm ? f32(*grad_cn).clone() : at::Tensor();
  b.dH_total = proj ? new_buffer({g.N, g.Hout}, fopt, poison) : at::Tensor();
  return b;
}

void persistent_backward(const Geometry& g, const Steps& s, const Choice& choice, const Weights& w,
                         const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj, const at::Tensor& grad_out,
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
  a.w_hh = w_hh.data_ptr();
  a.w_proj = defined(w_proj) ? w_proj->data_ptr() : nullptr;
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

std::vector<at::Tensor> backward(const std::string& family, const std::string& mode, const at::Tensor& grad_out,
                                 const at::Tensor& grad_hn, const c10::optional<at::Tensor>& grad_cn,
                                 const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                 const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                                 const c10::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& out,
                                 const at::Tensor& workspace, bool poison, const std::string& strategy) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes);
  const Cell& cell = g.cell;
  const int64_t H = g.H, Hout = g.Hout, W = cell.workspace_blocks() * H;
  checks::check_backward_call(g, x, grad_out, grad_hn, grad_cn, out, workspace);
  const Strategy requested = parse_strategy(strategy);
  const KernelDevice device(x.device());
  const cudaStream_t stream = device.stream();
  const Steps s(g.sizes, reverse);
  const DType dtype = storage_dtype(x.scalar_type());
  const Weights w = float_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj);
  const bool proj = w.w_proj.defined();
  const at::Tensor h0f = f32(h0);
  const at::Tensor c0f = cell.family == Family::lstm ? f32(*c0) : at::Tensor();

  BackwardState b = backward_buffers(g, grad_hn, grad_cn, x.options().dtype(at::kFloat), proj, poison);
  const Choice choice = resolve_strategy(requested, &plan_persistent_backward, g, proj, x.scalar_type(), s,
                                         device.ordinal());
  if (choice.strategy == Strategy::persistent) {
    persistent_backward(g, s, choice, w, w_hh, w_proj, grad_out, out, workspace, h0f, c0f, b, dtype, stream);
  } else {
    per_step_backward(g, s, w, grad_out, out, workspace, h0f, c0f, b, dtype, stream, poison);
  }
  const at::Tensor &dA_x = b.dA_x, &dA_h = b.dA_h, &dh = b.dh, &dc = b.dc, &dH_total = b.dH_total;

  // weight gradients: single products over all steps
  const at::Tensor X = x.reshape({g.N, g.I}).to(at::kFloat);
  const at::Tensor WS = workspace.reshape({g.N, W}).to(at::kFloat);
  const at::Tensor prev_index = previous_index(s, x.device());
  const at::Tensor H_prev = previous_rows(out.reshape({g.N, Hout}).to(at::kFloat), h0f, prev_index);
  const auto dt = x.scalar_type();
  const auto back = [&](const at::Tensor& t) { return t.defined() ? t.to(dt) : x.new_empty({0}); };
  at::Tensor dw_hh;
  if (cell.family == Family::gru && !cell.reset_after) {
    const at::Tensor K = WS.narrow(1, 3 * H, H);
    dw_hh = at::cat({at::mm(dA_h.narrow(1, 0, 2 * H).t(), H_prev), at::mm(dA_h.narrow(1, 2 * H, H).t(), K)});
  } else {
    dw_hh = at::mm(dA_h.t(), H_prev);
  }
  at::Tensor dw_peep, dw_proj;
  if (w.w_peep.defined()) {  // sums over rows: da_i*c_prev, da_f*c_prev, da_o*c'
    const at::Tensor C = WS.narrow(1, 4 * H, H);
    const at::Tensor C_prev = previous_rows(C, c0f, prev_index);
    dw_peep = at::cat({(dA_x.narrow(1, 0, H) * C_prev).sum(0), (dA_x.narrow(1, H, H) * C_prev).sum(0),
                       (dA_x.narrow(1, 3 * H, H) * C).sum(0)});
  }
  if (proj) {
    const at::Tensor M = WS.narrow(1, 3 * H, H) * WS.narrow(1, 4 * H, H).tanh();
    dw_proj = at::mm(dH_total.t(), M);
  }
  return {at::mm(dA_x, w.w_ih).reshape(x.sizes()).to(dt),
          dh.to(dt),
          back(dc),
          at::mm(dA_x.t(), X).to(dt),
          dw_hh.to(dt),
          w.b_ih.defined() ? dA_x.sum(0).to(dt) : x.new_empty({0}),
          w.b_hh.defined() ? dA_h.sum(0).to(dt) : x.new_empty({0}),
          back(dw_peep),
          back(dw_proj)};
}

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

TORCH_LIBRARY_FRAGMENT(fusedrnn_C, m) {
  m.def(
      "cuda_forward(str family, str mode, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, Tensor? batch_sizes, bool reverse, str strategy=\"auto\", "
      "bool poison=False) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cuda_backward(str family, str mode, Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor h0, "
      "Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, "
      "Tensor? batch_sizes, bool reverse, Tensor out, Tensor workspace, bool poison=False, str strategy=\"auto\") "
      "-> Tensor[]");
  m.def(
      "cuda_forward_strategy(str family, str mode, Tensor x, Tensor h0, Tensor w_hh, Tensor? w_proj, int steps) "
      "-> str");
  m.def(
      "cuda_backward_strategy(str family, str mode, Tensor x, Tensor h0, Tensor w_hh, Tensor? w_proj, int steps) "
      "-> str");
}

TORCH_LIBRARY_IMPL(fusedrnn_C, FUSEDRNN_KERNEL_DISPATCH_KEY, m) {
  m.impl("cuda_forward", &fusedrnn::cuda::forward);
  m.impl("cuda_backward", &fusedrnn::cuda::backward);
  m.impl("cuda_forward_strategy", &fusedrnn::cuda::forward_strategy);
  m.impl("cuda_backward_strategy", &fusedrnn::cuda::backward_strategy);
}
