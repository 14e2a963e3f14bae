// The ops of op_schema.h (csrc/include/fusedrnn) for the CPU dispatch key,
// and describe() -> str (the ISA and threads in use).
//
// Every argument is checked here (TORCH_CHECK: a RuntimeError naming the
// argument, never a crash).  float16/bfloat16 run in float32 inside (states,
// accumulation and gate math) and are rounded once on the way out, as the
// reference does.  The strategies ("auto", "gemm", "fused", "folded") are
// strategy.h's.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/op_schema.h"
#include "sequence.h"
#include "step.h"

namespace fusedrnn {
namespace cpu {
namespace {

using checks::Geometry;

Strategy parse_strategy(const std::string& s) {
  if (s == "auto") return Strategy::automatic;
  if (s == "gemm") return Strategy::gemm;
  if (s == "folded") return Strategy::folded;
  TORCH_CHECK(s == "fused", "fusedrnn_C: strategy must be 'auto', 'gemm', 'fused' or 'folded', got '", s, "'");
  return Strategy::fused;
}

const char* strategy_name(Strategy s) {
  return s == Strategy::gemm ? "gemm" : s == Strategy::fused ? "fused" : s == Strategy::folded ? "folded" : "auto";
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

at::Tensor value_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// The shared checks (csrc/include/fusedrnn/op_checks.h), after the CPU-specific ones on x.
Geometry check_call(const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
                    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                    const c10::optional<at::Tensor>& batch_sizes,
                    const c10::optional<at::Tensor>& w_extra = c10::nullopt) {
  TORCH_CHECK(x.device().is_cpu(), "fusedrnn_C: x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(supported_dtype(x.scalar_type()), "fusedrnn_C: x must be float32, float64, bfloat16 or float16, got ",
              x.scalar_type());
  return checks::check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
}

at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// (the dtype compared first: even a conversion to the same dtype is a dispatcher call, and a short
// call converts a dozen tensors)
at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

at::Tensor to_compute(const at::Tensor& t, at::ScalarType cdt) {
  return t.defined() ? to_dtype(t, cdt).contiguous() : t;
}

at::Tensor to_compute(const c10::optional<at::Tensor>& t, at::ScalarType cdt) {
  return to_compute(value_or_undefined(t), cdt);
}

LayerWeights compute_weights(const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_peep,
                             const c10::optional<at::Tensor>& w_proj, const c10::optional<at::Tensor>& w_extra,
                             at::ScalarType cdt) {
  return LayerWeights{to_compute(w_ih, cdt),   to_compute(w_hh, cdt),   to_compute(b_ih, cdt),   to_compute(b_hh, cdt),
                      to_compute(w_peep, cdt), to_compute(w_proj, cdt), to_compute(w_extra, cdt)};
}

// [N, D] rows back to x's leading shape and dtype
at::Tensor restore(const at::Tensor& rows, const at::Tensor& x, int64_t width) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(width);
  return to_dtype(rows.reshape(shape), x.scalar_type());
}

at::Tensor rows_of(const at::Tensor& t, const Geometry& g, at::ScalarType cdt) {
  return to_dtype(t, cdt).contiguous().reshape({g.N, t.size(-1)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
    const c10::optional<at::Tensor>& batch_sizes, bool reverse, const std::string& strategy, bool poison,
    bool for_backward, const c10::optional<at::Tensor>& w_extra, const c10::optional<at::Tensor>& zoneout_mask) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
  const bool zoneout = checks::check_zoneout_mask(g, family, x, zoneout_mask);
  const Strategy strat = parse_strategy(strategy);
  const at::ScalarType cdt = compute_dtype(x.scalar_type());
  const LayerWeights w = compute_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, w_extra, cdt);
  const Steps steps(g.sizes, reverse);
  const at::Tensor mask = zoneout ? rows_of(*zoneout_mask, g, cdt) : at::Tensor();
  const ForwardOut r = sequence_forward(g.cell, rows_of(x, g, cdt), to_compute(h0, cdt), to_compute(c0, cdt), w,
                                        steps, strat, poison, for_backward, mask);
  const at::Tensor c_n = r.c_n.defined() ? to_dtype(r.c_n, x.scalar_type()) : x.new_empty({0});
  const at::Tensor workspace =
      r.workspace.defined() ? restore(r.workspace, x, g.cell.workspace_blocks(zoneout) * g.H) : x.new_empty({0});
  return {restore(r.out, x, g.Hout), to_dtype(r.h_n, x.scalar_type()), c_n, workspace};
}

std::vector<at::Tensor> backward(const std::string& family, const std::string& mode, const at::Tensor& grad_out,
                                 const at::Tensor& grad_hn, const c10::optional<at::Tensor>& grad_cn,
                                 const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                 const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_proj,
                                 const c10::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& out,
                                 const at::Tensor& workspace, const std::string& strategy, bool poison,
                                 bool need_dx, bool need_dweights, const c10::optional<at::Tensor>& w_extra,
                                 const c10::optional<at::Tensor>& zoneout_mask) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
  const bool zoneout = checks::check_zoneout_mask(g, family, x, zoneout_mask);
  checks::check_backward_call(g, x, grad_out, grad_hn, grad_cn, out, workspace, zoneout);
  const Strategy strat = parse_strategy(strategy);
  const at::ScalarType cdt = compute_dtype(x.scalar_type());
  const LayerWeights w = compute_weights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, w_extra, cdt);
  const Steps steps(g.sizes, reverse);
  const at::Tensor gcn = g.cell.has_cell_state() ? to_compute(grad_cn, cdt) : at::Tensor();
  const at::Tensor mask = zoneout ? rows_of(*zoneout_mask, g, cdt) : at::Tensor();
  const BackwardOut r = sequence_backward(g.cell, rows_of(grad_out, g, cdt), to_compute(grad_hn, cdt), gcn,
                                          rows_of(x, g, cdt), to_compute(h0, cdt), to_compute(c0, cdt), w, steps,
                                          rows_of(out, g, cdt), rows_of(workspace, g, cdt), strat, poison,
                                          need_dx, need_dweights, mask);
  return frame::op_result(r, x, g.cell);
}

// The step ops' schema has no w_extra: a layer-normalised cell's step runs as a sequence of one step
// (fusedrnn/backends/cpu.py gives it no step op).
void check_step_cell(const std::string& family, const std::string& mode) {
  TORCH_CHECK(!checks::parse_cell(family, mode).layer_norm(), "fusedrnn_C: the step ops have no ", family,
              " cell (no w_extra): run it as a sequence of one step");
}

// One step (op_schema.h's step_forward): step.h's kernel for float32, the
// sequence op with T = 1 for every other call it checks (float64, half
// precision, an empty batch).
std::tuple<at::Tensor, at::Tensor, at::Tensor> step_forward(
    const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h,
    const c10::optional<at::Tensor>& c, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_peep, bool for_backward) {
  check_step_cell(family, mode);
  TORCH_CHECK(x.dim() == 2, "fusedrnn_C: x of a step must be 2-D [batch, input_size], got ", x.dim(), "-D");
  const at::Tensor x_steps = x.unsqueeze(0);
  const Geometry g = check_call(family, mode, x_steps, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, {}, {});
  const at::Tensor c_t = value_or_undefined(c), b_ih_t = value_or_undefined(b_ih), b_hh_t = value_or_undefined(b_hh);
  const at::Tensor w_peep_t = value_or_undefined(w_peep);
  // step.h's kernels take a matrix w_hh: a diagonal cell (IndRNN) or one with heads (sLSTM) runs the
  // sequence op's
  if (!g.cell.diagonal() && !g.cell.block_diagonal() && step_kernel_runs(x, h, c_t, w_ih, w_hh, b_ih_t, b_hh_t, w_peep_t)) {
    auto [h_new, c_new, workspace] =
        cpu::step_kernel(g.cell, x, h, c_t, w_ih, w_hh, b_ih_t, b_hh_t, w_peep_t, for_backward);
    return {h_new, c_new.defined() ? c_new : x.new_empty({0}), workspace.defined() ? workspace : x.new_empty({0})};
  }
  auto [out, h_n, c_n, workspace] = forward(family, mode, x_steps, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, {}, {},
                                            false, "auto", false, for_backward, c10::nullopt, c10::nullopt);
  return {h_n, c_n, workspace.numel() > 0 ? workspace.squeeze(0) : x.new_empty({0})};
}

// The gradients of one step (op_schema.h's step_backward): step.h's kernel
// where it runs, else the sequence backward with T = 1.
std::vector<at::Tensor> step_backward(const std::string& family, const std::string& mode, const at::Tensor& grad_h,
                                      const c10::optional<at::Tensor>& grad_c, const at::Tensor& x,
                                      const at::Tensor& h, const c10::optional<at::Tensor>& c,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                      const c10::optional<at::Tensor>& w_peep, const at::Tensor& h_new,
                                      const at::Tensor& workspace, bool need_dx, bool need_dweights) {
  check_step_cell(family, mode);
  TORCH_CHECK(x.dim() == 2, "fusedrnn_C: x of a step must be 2-D [batch, input_size], got ", x.dim(), "-D");
  const at::Tensor x_steps = x.unsqueeze(0);
  const Geometry g = check_call(family, mode, x_steps, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, {}, {});
  const int64_t W = g.cell.workspace_blocks() * g.H;
  const at::Tensor ws_steps = workspace.reshape({1, g.B, W});
  checks::check_backward_call(g, x_steps, grad_h.unsqueeze(0), grad_h, grad_c, h_new.unsqueeze(0), ws_steps);
  const at::Tensor w_peep_t = value_or_undefined(w_peep);
  if (!g.cell.diagonal() && !g.cell.block_diagonal() && step_backward_kernel_runs(g.cell, x, w_ih, w_hh, w_peep_t)) {
    const StepGradients d =
        step_backward_kernel(g.cell, grad_h, value_or_undefined(grad_c), x, h, value_or_undefined(c), w_ih, w_hh,
                             checks::defined(b_ih), checks::defined(b_hh), h_new, workspace, need_dx, need_dweights);
    const auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : x.new_empty({0}); };
    return {or_empty(d.dx), d.dh, or_empty(d.dc), or_empty(d.dw_ih), or_empty(d.dw_hh), or_empty(d.db_ih),
            or_empty(d.db_hh), x.new_empty({0})};
  }
  // h' is both the step's output and its last state: its gradient enters once, as the output's
  std::vector<at::Tensor> d = backward(family, mode, grad_h.unsqueeze(0), at::zeros_like(h), grad_c, x_steps, h, c,
                                       w_ih, w_hh, b_ih, b_hh, w_peep, {}, {}, false, h_new.unsqueeze(0), ws_steps,
                                       "auto", false, need_dx, need_dweights, c10::nullopt, c10::nullopt);
  if (d[0].numel() > 0) d[0] = d[0].view(x.sizes());
  d.pop_back();  // dw_proj: a step has no projection
  return d;
}

// What "auto" runs: "fused" or "folded", or "gemm: <why not fused>"; "elementwise" for IndRNN,
// whatever the strategy, "gemm: ..." for the layer-normalised cells and "heads" for sLSTM.  The
// backward runs the fused kernels after either fused forward.
std::string chosen_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                            const at::Tensor& h0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                            int64_t steps, bool backward) {
  const checks::QuerySizes q = checks::check_strategy_query(family, mode, h0, w_hh, w_proj, steps);
  // no recurrent product to choose a strategy for: one element-wise kernel (diagonal_recurrence.h)
  if (q.cell.diagonal()) return "elementwise";
  // whatever the strategy asked for (layer_norm_recurrence.h)
  if (q.cell.layer_norm()) return "gemm: a layer-normalised cell normalises whole rows, not unit blocks";
  // its own fused kernel, a product per head and panel of units with its gating (slstm_recurrence.h)
  if (q.cell.block_diagonal()) return "heads";
  std::string why_gemm;
  const ProblemSizes sizes{q.B, q.steps, x.size(-1), q.H, q.P};
  const Strategy s = choose_strategy(q.cell, sizes, compute_dtype(x.scalar_type()), &why_gemm);
  if (s == Strategy::gemm) return "gemm: " + why_gemm;
  return backward ? "fused" : strategy_name(s);
}

std::string forward_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                             const at::Tensor& h0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                             int64_t steps) {
  return chosen_strategy(family, mode, x, h0, w_hh, w_proj, steps, false);
}

std::string backward_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                              const at::Tensor& h0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                              int64_t steps) {
  return chosen_strategy(family, mode, x, h0, w_hh, w_proj, steps, true);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedrnn

// the schema is defined once (csrc/fusedrnn.cpp, op_schema.h); describe() is the CPU kernels' own
TORCH_LIBRARY_FRAGMENT(fusedrnn_C, m) { m.def("describe() -> str", &fusedrnn::cpu::describe); }

TORCH_LIBRARY_IMPL(fusedrnn_C, CPU, m) {
  m.impl("forward", &fusedrnn::cpu::forward);
  m.impl("backward", &fusedrnn::cpu::backward);
  m.impl("step_forward", &fusedrnn::cpu::step_forward);
  m.impl("step_backward", &fusedrnn::cpu::step_backward);
  m.impl("forward_strategy", &fusedrnn::cpu::forward_strategy);
  m.impl("backward_strategy", &fusedrnn::cpu::backward_strategy);
}
