// The ops a model's graph holds, fusedrnn::{lstm,gru,rnn}_{forward,backward}
// (schema: fusedrnn/graph_schema.h), defined here so that a program exported
// with them (torch.export, an AOTInductor package) runs in a process that
// loads only this library, without Python.
//
// Who runs a call:
//  * backend "cpu" on CPU tensors, "cuda" on CUDA tensors: the compiled
//    kernels, fusedrnn_C::forward / backward (op_schema.h), with `strategy`;
//  * otherwise, where the Python package is loaded: its implementation,
//    fusedrnn::{family}_{forward,backward}_in_python (fusedrnn/ops.py), which
//    runs every backend ("reference", "triton", the CUDA emulation) and
//    resolves "auto" as eager calls do (fusedrnn/backends: the environment,
//    the context, fallbacks);
//  * "auto" without the Python package: the compiled kernels of the tensors'
//    device.
// Autograd, and the fake kernels torch.compile / torch.export trace with, are
// registered by fusedrnn/ops.py: a process without Python only runs graphs.
//
// Outputs never alias an input (a kernel may hand back an input unchanged,
// e.g. h0 for a sequence with no steps), as the dispatcher requires of a
// functional op.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "fusedrnn/graph_schema.h"
#include "fusedrnn/op_checks.h"
#include "fusedrnn/op_schema.h"

namespace fusedrnn {
namespace graph {
namespace {

using OptionalTensor = c10::optional<at::Tensor>;
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor>;

const char* const kFamilies[] = {"lstm", "gru", "rnn"};

// Whether the compiled kernels run `backend` on x's device.
bool compiled(const std::string& backend, const at::Tensor& x, bool python_present) {
  if (backend == "cpu") return x.is_cpu();
  if (backend == "cuda") return x.is_cuda() && built_with_cuda();
  return backend == "auto" && !python_present && (x.is_cpu() || (x.is_cuda() && built_with_cuda()));
}

c10::optional<c10::OperatorHandle> python_implementation(const std::string& family, const char* direction) {
  return c10::Dispatcher::singleton().findSchema({"fusedrnn::" + family + "_" + direction + "_in_python", ""});
}

[[noreturn]] void no_implementation(const std::string& family, const std::string& backend, const at::Tensor& x) {
  TORCH_CHECK(false, "fusedrnn::", family, ": backend '", backend, "' cannot run ", x.device(),
              " tensors in this process: the compiled kernels run 'cpu' on CPU tensors",
              built_with_cuda() ? " and 'cuda' on CUDA tensors" : "",
              " (and 'auto' on those); the other backends need the Python package (import fusedrnn)");
}

const c10::OperatorHandle& compiled_op(const char* name) {
  static const auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("fusedrnn_C::forward", "");
  static const auto backward = c10::Dispatcher::singleton().findSchemaOrThrow("fusedrnn_C::backward", "");
  return std::string(name) == "forward" ? forward : backward;
}

// A boxed call: the arguments as given, the outputs as returned.
std::vector<c10::IValue> call(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack;
}

// `t`, or a copy where it shares memory with one of `inputs`; never a view
// (the kernels return reshapes of their row buffers: an output that autograd
// sees as a view of a private tensor would make in-place edits of it raise,
// which torch.nn allows).
at::Tensor unaliased(const at::Tensor& t, const std::vector<c10::IValue>& inputs) {
  if (!t.defined()) return t;
  if (t.numel() > 0) {
    for (const auto& v : inputs) {
      if (v.isTensor() && v.toTensor().defined() && v.toTensor().numel() > 0 && v.toTensor().is_alias_of(t)) {
        return t.clone();
      }
    }
  }
  if (!t.is_view()) return t;
  return at::empty({0}, t.options()).set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
}

// An optional tensor argument for the kernels, which take contiguous tensors.
c10::IValue contiguous(const OptionalTensor& t) {
  return checks::defined(t) ? c10::IValue(t->contiguous()) : c10::IValue();
}

template <size_t... I>
auto as_tuple(const std::vector<c10::IValue>& out, const std::vector<c10::IValue>& inputs,
              std::index_sequence<I...>) {
  return std::make_tuple(unaliased(out[I].toTensor(), inputs)...);
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

ForwardResult forward(const std::string& family, const at::Tensor& x, const at::Tensor& h0, const OptionalTensor& c0,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
                      const OptionalTensor& b_hh, const OptionalTensor& w_peep, const OptionalTensor& w_proj,
                      const OptionalTensor& batch_sizes, bool reverse, c10::string_view mode, c10::string_view backend,
                      bool for_backward, c10::string_view strategy, const OptionalTensor& zoneout_mask) {
  const std::string name(backend);
  const auto python = python_implementation(family, "forward");
  std::vector<c10::IValue> inputs{x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes};
  std::vector<c10::IValue> out;
  if (compiled(name, x, python.has_value())) {
    // the kernels take contiguous tensors; 16-bit weights stay as they are (computed in float32 inside)
    std::vector<c10::IValue> args{std::string(family), std::string(mode)};
    for (const auto& v : inputs) args.push_back(v.isTensor() ? c10::IValue(v.toTensor().contiguous()) : v);
    args.insert(args.end(), {reverse, std::string(strategy), false, for_backward, c10::IValue(),  // no w_extra
                             contiguous(zoneout_mask)});
    out = call(compiled_op("forward"), std::move(args));
  } else if (python.has_value()) {
    std::vector<c10::IValue> args = inputs;
    args.insert(args.end(), {reverse, std::string(mode), name, for_backward, std::string(strategy), zoneout_mask});
    out = call(*python, std::move(args));
  } else {
    no_implementation(family, name, x);
  }
  return as_tuple(out, inputs, std::make_index_sequence<4>());
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

BackwardResult backward(const std::string& family, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                        const OptionalTensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                        const OptionalTensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh, const OptionalTensor& w_peep,
                        const OptionalTensor& w_proj, const OptionalTensor& batch_sizes, bool reverse,
                        c10::string_view mode, c10::string_view backend, const at::Tensor& out,
                        const at::Tensor& workspace, bool need_dx, bool need_dweights, c10::string_view strategy,
                        const OptionalTensor& zoneout_mask) {
  const std::string name(backend);
  const auto python = python_implementation(family, "backward");
  std::vector<c10::IValue> inputs{grad_out, grad_hn, grad_cn, x,      h0,     c0,          w_ih, w_hh,
                                  b_ih,     b_hh,    w_peep,  w_proj, batch_sizes};
  std::vector<c10::IValue> result;
  if (compiled(name, x, python.has_value())) {
    std::vector<c10::IValue> args{std::string(family), std::string(mode)};
    for (const auto& v : inputs) args.push_back(v.isTensor() ? c10::IValue(v.toTensor().contiguous()) : v);
    args.insert(args.end(), {reverse, out.contiguous(), workspace.contiguous(), std::string(strategy), false,
                             need_dx, need_dweights, c10::IValue(),  // these families have no w_extra
                             contiguous(zoneout_mask)});
    const std::vector<at::Tensor> grads = call(compiled_op("backward"), std::move(args))[0].toTensorVector();
    result.assign(grads.begin(), grads.end());
  } else if (python.has_value()) {
    std::vector<c10::IValue> args = inputs;
    args.insert(args.end(), {reverse, std::string(mode), name, out, workspace, need_dx, need_dweights,
                             std::string(strategy), zoneout_mask});
    result = call(*python, std::move(args));
  } else {
    no_implementation(family, name, x);
  }
  inputs.push_back(out);
  inputs.push_back(workspace);
  return as_tuple(result, inputs, std::make_index_sequence<9>());
}

// One kernel function per family and direction (the family is not an argument of the schema).
template <int F>
ForwardResult family_forward(const at::Tensor& x, const at::Tensor& h0, const OptionalTensor& c0,
                             const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const OptionalTensor& w_peep, const OptionalTensor& w_proj,
                             const OptionalTensor& batch_sizes, bool reverse, c10::string_view mode,
                             c10::string_view backend, bool for_backward, c10::string_view strategy,
                             const OptionalTensor& zoneout_mask) {
  return forward(kFamilies[F], x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, reverse, mode,
                 backend, for_backward, strategy, zoneout_mask);
}

template <int F>
BackwardResult family_backward(const at::Tensor& grad_out, const at::Tensor& grad_hn, const OptionalTensor& grad_cn,
                               const at::Tensor& x, const at::Tensor& h0, const OptionalTensor& c0,
                               const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const OptionalTensor& w_peep,
                               const OptionalTensor& w_proj, const OptionalTensor& batch_sizes, bool reverse,
                               c10::string_view mode, c10::string_view backend, const at::Tensor& out,
                               const at::Tensor& workspace, bool need_dx, bool need_dweights,
                               c10::string_view strategy, const OptionalTensor& zoneout_mask) {
  return backward(kFamilies[F], grad_out, grad_hn, grad_cn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj,
                  batch_sizes, reverse, mode, backend, out, workspace, need_dx, need_dweights, strategy, zoneout_mask);
}

template <int F>
void define_family(torch::Library& m) {
  const std::string family = kFamilies[F];
  m.def((family + "_forward" + kForwardArguments).c_str());
  m.def((family + "_backward" + kBackwardArguments).c_str());
}

template <int F>
void implement_family(torch::Library& m) {
  const std::string family = kFamilies[F];
  m.impl((family + "_forward").c_str(), &family_forward<F>);
  m.impl((family + "_backward").c_str(), &family_backward<F>);
}

}  // namespace
}  // namespace graph
}  // namespace fusedrnn

TORCH_LIBRARY_FRAGMENT(fusedrnn, m) {
  fusedrnn::graph::define_family<0>(m);
  fusedrnn::graph::define_family<1>(m);
  fusedrnn::graph::define_family<2>(m);
}

// One implementation for every device that has kernels (it picks them itself);
// meta and fake tensors get the fake kernels fusedrnn/ops.py registers.
TORCH_LIBRARY_IMPL(fusedrnn, CompositeExplicitAutograd, m) {
  fusedrnn::graph::implement_family<0>(m);
  fusedrnn::graph::implement_family<1>(m);
  fusedrnn::graph::implement_family<2>(m);
}
