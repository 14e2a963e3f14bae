// Dispatcher ops of the fused CPU backend, namespace fusedrnn_C:
//
//   forward(family, mode, x, h0, c0?, w_ih, w_hh, b_ih?, b_hh?, w_peep?, w_proj?,
//           batch_sizes?, reverse, strategy="auto", poison=False)
//       -> (out, h_n, c_n, workspace)            c_n is empty outside LSTM
//   backward(family, mode, grad_out, grad_hn, grad_cn?, x, h0, c0?, w_ih, w_hh,
//            b_ih?, b_hh?, w_peep?, w_proj?, batch_sizes?, reverse, out, workspace,
//            strategy="auto", poison=False)
//       -> [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_proj]
//                                                empty where the input is absent
//   describe() -> str                            ISA and threads in use
//
// Shapes and layouts are those of fusedrnn/backends/base.py.  Every argument
// is checked here (TORCH_CHECK: a RuntimeError naming the argument, never a
// crash).  float16/bfloat16 run in float32 inside (states, accumulation and
// gate math) and are rounded once on the way out, as the reference does.
// `strategy` ("auto", "gemm", "fused") and `poison` (fill every output and
// scratch buffer with NaN before the kernels write them) exist for tests.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "sequence.h"

namespace fusedrnn {
namespace cpu {
namespace {

Cell parse_cell(const std::string& family, const std::string& mode) {
  Cell cell{Family::rnn};
  if (family == "lstm") {
    TORCH_CHECK(mode == "lstm", "fusedrnn_C: mode of an lstm cell must be 'lstm', got '", mode, "'");
    cell.family = Family::lstm;
  } else if (family == "gru") {
    TORCH_CHECK(mode == "reset_after" || mode == "reset_before",
                "fusedrnn_C: mode of a gru cell must be 'reset_after' or 'reset_before', got '", mode, "'");
    cell.family = Family::gru;
    cell.reset_after = mode == "reset_after";
  } else {
    TORCH_CHECK(family == "rnn", "fusedrnn_C: family must be 'lstm', 'gru' or 'rnn', got '", family, "'");
    TORCH_CHECK(mode == "tanh" || mode == "relu", "fusedrnn_C: mode of an rnn cell must be 'tanh' or 'relu', got '",
                mode, "'");
    cell.relu = mode == "relu";
  }
  return cell;
}

Strategy parse_strategy(const std::string& s) {
  if (s == "auto") return Strategy::automatic;
  if (s == "gemm") return Strategy::gemm;
  TORCH_CHECK(s == "fused", "fusedrnn_C: strategy must be 'auto', 'gemm' or 'fused', got '", s, "'");
  return Strategy::fused;
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "fusedrnn_C: ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fusedrnn_C: ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; all must match");
  TORCH_CHECK(t.sizes() == shape, "fusedrnn_C: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fusedrnn_C: ", name, " must be contiguous");
}

void check_optional(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                    at::IntArrayRef shape) {
  if (t.has_value() && t->defined()) check_tensor(*t, name, x, shape);
}

at::Tensor value_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// The checked geometry of one call.
struct Geometry {
  Cell cell;
  int64_t G, H, Hout, I, T, B, N;
  bool packed;
  std::vector<int64_t> sizes;
};

Geometry check_call(const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
                    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                    const c10::optional<at::Tensor>& batch_sizes) {
  Geometry g;
  g.cell = parse_cell(family, mode);
  g.G = g.cell.gates();
  TORCH_CHECK(x.device().is_cpu(), "fusedrnn_C: x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(supported_dtype(x.scalar_type()), "fusedrnn_C: x must be float32, float64, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "fusedrnn_C: x must be contiguous");
  g.packed = batch_sizes.has_value() && batch_sizes->defined();
  TORCH_CHECK(x.dim() == (g.packed ? 2 : 3), "fusedrnn_C: x must be ",
              g.packed ? "2-D packed rows [N, input_size] with batch_sizes" : "3-D [T, B, input_size]", ", got ",
              x.dim(), "-D");
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "fusedrnn_C: w_ih and w_hh must be 2-D, got ", w_ih.dim(), "-D and ",
              w_hh.dim(), "-D");
  TORCH_CHECK(w_hh.size(0) % g.G == 0 && w_hh.size(0) > 0, "fusedrnn_C: w_hh must have ", g.G,
              "*hidden_size rows for a ", family, " cell, got ", w_hh.size(0));
  g.H = w_hh.size(0) / g.G;
  g.Hout = w_hh.size(1);
  g.I = x.size(-1);
  const bool proj = w_proj.has_value() && w_proj->defined();
  TORCH_CHECK(g.cell.family == Family::lstm || !(proj || (w_peep.has_value() && w_peep->defined())),
              "fusedrnn_C: w_peep and w_proj exist only for lstm cells");
  TORCH_CHECK(proj || g.Hout == g.H, "fusedrnn_C: w_hh must have shape [", g.G * g.H, ", ", g.H, "] without w_proj, got ",
              w_hh.sizes());
  check_tensor(w_ih, "w_ih", x, {g.G * g.H, g.I});
  check_tensor(w_hh, "w_hh", x, {g.G * g.H, g.Hout});
  check_optional(b_ih, "b_ih", x, {g.G * g.H});
  check_optional(b_hh, "b_hh", x, {g.G * g.H});
  check_optional(w_peep, "w_peep", x, {3 * g.H});
  check_optional(w_proj, "w_proj", x, {g.Hout, g.H});
  TORCH_CHECK(h0.dim() == 2, "fusedrnn_C: h0 must be 2-D [batch, hidden], got ", h0.dim(), "-D");
  if (g.packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1 && bs.is_contiguous(),
                "fusedrnn_C: batch_sizes must be a contiguous 1-D int64 CPU tensor, got ", bs.scalar_type(), " ",
                bs.sizes(), " on ", bs.device());
    TORCH_CHECK(bs.numel() > 0, "fusedrnn_C: batch_sizes must not be empty");
    const int64_t* p = bs.data_ptr<int64_t>();
    g.sizes.assign(p, p + bs.numel());
    g.B = h0.size(0);
    TORCH_CHECK(g.sizes[0] == g.B, "fusedrnn_C: batch_sizes[0] (", g.sizes[0], ") must equal the batch of h0 (", g.B,
                ")");
    int64_t total = 0;
    for (size_t t = 0; t < g.sizes.size(); ++t) {
      TORCH_CHECK(g.sizes[t] >= 1 && (t == 0 || g.sizes[t] <= g.sizes[t - 1]),
                  "fusedrnn_C: batch_sizes must be >= 1 and non-increasing, got ", bs);
      total += g.sizes[t];
    }
    TORCH_CHECK(total == x.size(0), "fusedrnn_C: batch_sizes sum to ", total, " but x has ", x.size(0), " rows");
    g.T = static_cast<int64_t>(g.sizes.size());
    g.N = total;
  } else {
    g.T = x.size(0);
    g.B = x.size(1);
    g.sizes.assign(g.T, g.B);
    g.N = g.T * g.B;
  }
  check_tensor(h0, "h0", x, {g.B, g.Hout});
  if (g.cell.family == Family::lstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "fusedrnn_C: c0 is required for an lstm cell");
    check_tensor(*c0, "c0", x, {g.B, g.H});
  } else {
    TORCH_CHECK(!(c0.has_value() && c0->defined()), "fusedrnn_C: c0 must be None for a ", family, " cell");
  }
  return g;
}

at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor to_compute(const at::Tensor& t, at::ScalarType cdt) {
  return t.defined() ? t.to(cdt).contiguous() : t;
}

at::Tensor to_compute(const c10::optional<at::Tensor>& t, at::ScalarType cdt) {
  return to_compute(value_or_undefined(t), cdt);
}

LayerTensors compute_weights(const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_peep,
                             const c10::optional<at::Tensor>& w_proj, at::ScalarType cdt) {
  return LayerTensors{to_compute(w_ih, cdt), to_compute(w_hh, cdt), to_compute(b_ih, cdt),
                      to_compute(b_hh, cdt), to_compute(w_peep, cdt), to_compute(w_proj, cdt)};
}

// [N, D] rows back to x's leading shape and dtype
at::Tensor restore(const at::Tensor& rows, const at::Tensor& x, int64_t width) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(width);
  return rows.reshape(shape).to(x.scalar_type());
}

at::Tensor rows_of(const at::Tensor& t, const Geometry& g, at::ScalarType cdt) {
  return t.to(cdt).contiguous().reshape({g.N, t.size(-1)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
    const c10::optional<at::Tensor>& batch_sizes, bool reverse, const std::string& strategy, bool poison) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes);
  const Strategy strat = parse_strategy(strategy);
  const at::ScalarType cdt = compute_dtype(x.scalar_type());
  const LayerTensors w = compute_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, cdt);
  const Steps steps(g.sizes, reverse);
  const ForwardOut r = sequence_forward(g.cell, rows_of(x, g, cdt), to_compute(h0, cdt), to_compute(c0, cdt), w,
                                        steps, strat, poison);
  const at::Tensor c_n = r.c_n.defined() ? r.c_n.to(x.scalar_type()) : x.new_empty({0});
  return {restore(r.out, x, g.Hout), r.h_n.to(x.scalar_type()), c_n,
          restore(r.workspace, x, g.cell.workspace_blocks() * g.H)};
}

std::vector<at::Tensor> backward(const std::string& family, const std::string& mode, const at::Tensor& grad_out,
                                 const at::Tensor& grad_hn, const c10::optional<at::Tensor>& grad_cn,
                                 const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                 const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                                 const c10::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& out,
                                 const at::Tensor& workspace, const std::string& strategy, bool poison) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes);
  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> out_shape = lead, ws_shape = lead;
  out_shape.push_back(g.Hout);
  ws_shape.push_back(g.cell.workspace_blocks() * g.H);
  check_tensor(grad_out, "grad_out", x, out_shape);
  check_tensor(out, "out", x, out_shape);
  check_tensor(workspace, "workspace", x, ws_shape);
  check_tensor(grad_hn, "grad_hn", x, {g.B, g.Hout});
  if (g.cell.family == Family::lstm) {
    TORCH_CHECK(grad_cn.has_value() && grad_cn->defined(), "fusedrnn_C: grad_cn is required for an lstm cell");
    check_tensor(*grad_cn, "grad_cn", x, {g.B, g.H});
  }
  const Strategy strat = parse_strategy(strategy);
  const at::ScalarType cdt = compute_dtype(x.scalar_type());
  const LayerTensors w = compute_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, cdt);
  const Steps steps(g.sizes, reverse);
  const at::Tensor gcn = g.cell.family == Family::lstm ? to_compute(grad_cn, cdt) : at::Tensor();
  const BackwardOut r = sequence_backward(g.cell, rows_of(grad_out, g, cdt), to_compute(grad_hn, cdt), gcn,
                                          rows_of(x, g, cdt), to_compute(h0, cdt), to_compute(c0, cdt), w, steps,
                                          rows_of(out, g, cdt), rows_of(workspace, g, cdt), strat, poison);
  const auto back = [&](const at::Tensor& t) { return t.defined() ? t.to(x.scalar_type()) : x.new_empty({0}); };
  return {r.dx.reshape(x.sizes()).to(x.scalar_type()),
          back(r.dh0),
          back(r.dc0),
          back(r.dw.w_ih),
          back(r.dw.w_hh),
          back(r.dw.b_ih),
          back(r.dw.b_hh),
          back(r.dw.w_peep),
          back(r.dw.w_proj)};
}

}  // namespace
}  // namespace cpu
}  // namespace fusedrnn

TORCH_LIBRARY_FRAGMENT(fusedrnn_C, m) {
  m.def(
      "forward(str family, str mode, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, Tensor? batch_sizes, bool reverse, str strategy=\"auto\", "
      "bool poison=False) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(str family, str mode, Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor h0, "
      "Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, "
      "Tensor? batch_sizes, bool reverse, Tensor out, Tensor workspace, str strategy=\"auto\", bool poison=False) "
      "-> Tensor[]");
  m.def("describe() -> str", &fusedrnn::cpu::describe);
}

TORCH_LIBRARY_IMPL(fusedrnn_C, CPU, m) {
  m.impl("forward", &fusedrnn::cpu::forward);
  m.impl("backward", &fusedrnn::cpu::backward);
}
