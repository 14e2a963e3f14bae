// The `step` op (op_schema.h): one differentiable time step of a cell, with its
// autograd formula in C++.
//
// Why in C++: a decoder calls its cell once per token, and a step at decoder
// sizes is a few microseconds of arithmetic.  Through a Python
// autograd.Function (fusedrnn/ops.py) the autograd layer alone cost more than
// torch.nn's whole LSTMCell call (benchmarks/RESULTS.md, "Per-call overhead").
// Here the forward is the device's `step_forward` kernel and the backward its
// `step_backward` (csrc/cpu/step.h on the CPU), both found through the
// dispatcher, so this file is the same for every device.
//
// Double backward (create_graph=True): the backward differentiates ATen's own
// cell (at::lstm_cell, at::gru_cell, at::rnn_tanh_cell, at::rnn_relu_cell: the
// same function) so that second derivatives exist, as the sequence ops do
// through the reference.  The cells ATen lacks (peepholes, GRU reset_before)
// refuse it with an error; fusedrnn's modules send such calls to the sequence
// op instead (fusedrnn/cell_modules.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "fusedrnn/op_checks.h"

namespace fusedrnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = c10::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_forward(const std::string& family, const std::string& mode,
                                                            const at::Tensor& x, const at::Tensor& h,
                                                            const OptionalTensor& c, const at::Tensor& w_ih,
                                                            const at::Tensor& w_hh, const OptionalTensor& b_ih,
                                                            const OptionalTensor& b_hh, const OptionalTensor& w_peep,
                                                            bool for_backward) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedrnn_C::step_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const std::string&, const std::string&, const at::Tensor&, const at::Tensor&, const OptionalTensor&,
              const at::Tensor&, const at::Tensor&, const OptionalTensor&, const OptionalTensor&,
              const OptionalTensor&, bool)>();
  return op.call(family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, for_backward);
}

std::vector<at::Tensor> step_backward(const std::string& family, const std::string& mode, const at::Tensor& grad_h,
                                      const OptionalTensor& grad_c, const at::Tensor& x, const at::Tensor& h,
                                      const OptionalTensor& c, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                      const OptionalTensor& w_peep, const at::Tensor& h_new,
                                      const at::Tensor& workspace, bool need_dx, bool need_dweights) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedrnn_C::step_backward", "")
          .typed<std::vector<at::Tensor>(
              const std::string&, const std::string&, const at::Tensor&, const OptionalTensor&, const at::Tensor&,
              const at::Tensor&, const OptionalTensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&,
              const OptionalTensor&, const OptionalTensor&, const at::Tensor&, const at::Tensor&, bool, bool)>();
  return op.call(family, mode, grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, h_new, workspace, need_dx,
                 need_dweights);
}

OptionalTensor optional(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : c10::nullopt; }

bool requires_grad(const OptionalTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); }

// ATen's cell on the saved inputs, differentiably: (h', c' or undefined).
std::tuple<at::Tensor, at::Tensor> aten_cell(const Cell& cell, const at::Tensor& x, const at::Tensor& h,
                                             const at::Tensor& c, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                             const at::Tensor& b_ih, const at::Tensor& b_hh) {
  const OptionalTensor bi = optional(b_ih), bh = optional(b_hh);
  if (cell.family == Family::lstm) {
    auto [h_new, c_new] = at::lstm_cell(x, {h, c}, w_ih, w_hh, bi, bh);
    return {h_new, c_new};
  }
  if (cell.family == Family::gru) return {at::gru_cell(x, h, w_ih, w_hh, bi, bh), at::Tensor()};
  return {cell.relu ? at::rnn_relu_cell(x, h, w_ih, w_hh, bi, bh) : at::rnn_tanh_cell(x, h, w_ih, w_hh, bi, bh),
          at::Tensor()};
}

// Saved: x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep (undefined where absent), then h' and the workspace.
struct StepFunction : public torch::autograd::Function<StepFunction> {
  static variable_list forward(AutogradContext* ctx, const std::string& family, const std::string& mode,
                               const at::Tensor& x, const at::Tensor& h, const OptionalTensor& c,
                               const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const OptionalTensor& w_peep) {
    auto [h_new, c_new, workspace] = step_forward(family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, true);
    const auto value = [](const OptionalTensor& t) { return t.has_value() ? *t : at::Tensor(); };
    // the backward reads h' (an RNN's derivative comes from it): a copy, as torch.nn lets callers edit
    // the outputs in place before the backward
    ctx->save_for_backward(
        {x, h, value(c), w_ih, w_hh, value(b_ih), value(b_hh), value(w_peep), h_new.clone(), workspace});
    ctx->saved_data["family"] = family;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["need_dx"] = x.requires_grad();
    ctx->saved_data["need_dweights"] = w_ih.requires_grad() || w_hh.requires_grad() || requires_grad(b_ih) ||
                                       requires_grad(b_hh) || requires_grad(w_peep);
    if (!c.has_value()) ctx->mark_non_differentiable({c_new});  // the empty c' of a cell without a cell state
    return {h_new, c_new};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string family = ctx->saved_data["family"].toStringRef();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const Cell cell = checks::parse_cell(family, mode);
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &h = s[1], &c = s[2], &w_ih = s[3], &w_hh = s[4], &b_ih = s[5], &b_hh = s[6];
    const at::Tensor &w_peep = s[7], &h_new = s[8], &workspace = s[9];
    const bool lstm = cell.family == Family::lstm;
    // the kernels take contiguous gradients (autograd may hand an expanded one, e.g. from sum())
    const at::Tensor dh = grads[0].contiguous();
    const at::Tensor dc = lstm ? grads[1].contiguous() : at::Tensor();
    variable_list result(10);  // family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep

    if (at::GradMode::is_enabled()) {  // create_graph: differentiate ATen's cell, the same function
      TORCH_CHECK(!w_peep.defined() && (cell.family != Family::gru || cell.reset_after),
                  "fusedrnn_C::step: double backward (create_graph=True) is not available for a ", family, " '", mode,
                  "' step", w_peep.defined() ? " with peepholes" : "",
                  "; run the step as a sequence of one step (fusedrnn.functional.layer), whose ops have it");
      auto [h2, c2] = aten_cell(cell, x, h, c, w_ih, w_hh, b_ih, b_hh);
      std::vector<at::Tensor> outputs{h2}, seeds{dh};
      if (lstm) {
        outputs.push_back(c2);
        seeds.push_back(dc);
      }
      std::vector<at::Tensor> inputs;
      std::vector<size_t> slots;
      for (size_t i : {0, 1, 2, 3, 4, 5, 6}) {
        if (s[i].defined() && s[i].requires_grad()) {
          inputs.push_back(s[i]);
          slots.push_back(i + 2);
        }
      }
      const variable_list g = torch::autograd::grad(outputs, inputs, seeds, /*retain_graph=*/true,
                                                    /*create_graph=*/true, /*allow_unused=*/true);
      for (size_t k = 0; k < slots.size(); ++k) result[slots[k]] = g[k];
      return result;
    }

    const bool need_dx = ctx->saved_data["need_dx"].toBool();
    const bool need_dweights = ctx->saved_data["need_dweights"].toBool();
    const std::vector<at::Tensor> d =
        step_backward(family, mode, dh, lstm ? OptionalTensor(dc) : c10::nullopt, x, h, optional(c), w_ih, w_hh,
                      optional(b_ih), optional(b_hh), optional(w_peep), h_new, workspace, need_dx, need_dweights);
    // d: dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_peep (empty where absent or not asked for)
    if (need_dx) result[2] = d[0];
    result[3] = d[1];
    if (lstm) result[4] = d[2];
    if (need_dweights) {
      result[5] = d[3];
      result[6] = d[4];
      if (b_ih.defined()) result[7] = d[5];
      if (b_hh.defined()) result[8] = d[6];
      if (w_peep.defined()) result[9] = d[7];
    }
    return result;
  }
};

bool any_requires_grad(const at::Tensor& x, const at::Tensor& h, const OptionalTensor& c, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                       const OptionalTensor& w_peep) {
  return x.requires_grad() || h.requires_grad() || requires_grad(c) || w_ih.requires_grad() ||
         w_hh.requires_grad() || requires_grad(b_ih) || requires_grad(b_hh) || requires_grad(w_peep);
}

// Below autograd (inference mode, or redispatched): the kernel without a workspace.
std::tuple<at::Tensor, at::Tensor> step_inference(const std::string& family, const std::string& mode,
                                                  const at::Tensor& x, const at::Tensor& h, const OptionalTensor& c,
                                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                  const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                                  const OptionalTensor& w_peep) {
  auto [h_new, c_new, workspace] = step_forward(family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep, false);
  return {h_new, c_new};
}

std::tuple<at::Tensor, at::Tensor> step_autograd(const std::string& family, const std::string& mode,
                                                 const at::Tensor& x, const at::Tensor& h, const OptionalTensor& c,
                                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                 const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                                 const OptionalTensor& w_peep) {
  if (!at::GradMode::is_enabled() || !any_requires_grad(x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return step_inference(family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep);
  }
  const variable_list out = StepFunction::apply(family, mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_peep);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn_C, Autograd, m) { m.impl("step", &fusedrnn::step_autograd); }
TORCH_LIBRARY_IMPL(fusedrnn_C, CompositeExplicitAutograd, m) { m.impl("step", &fusedrnn::step_inference); }
