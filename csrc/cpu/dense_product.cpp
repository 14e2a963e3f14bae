#include "dense_product.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace fusedrnn {
namespace cpu {

namespace {

// mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr,
//                           Scalar?[] scalars, str? algorithm) -> Tensor
// computes X W^T + B through oneDNN's matmul ("none": no fused activation).
// Used only if its schema still reads like that.
bool schema_as_expected(const c10::FunctionSchema& schema) {
  const auto& args = schema.arguments();
  static const char* const names[] = {"X", "W", "B", "attr", "scalars", "algorithm"};
  if (args.size() != 6 || schema.returns().size() != 1) return false;
  for (size_t i = 0; i < args.size(); ++i)
    if (args[i].name() != names[i]) return false;
  return true;
}

const std::optional<c10::OperatorHandle>& onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op = []() -> std::optional<c10::OperatorHandle> {
    const char* forced = std::getenv("FUSEDRNN_CPU_LINEAR");
    if (forced != nullptr && std::strcmp(forced, "aten") == 0) return std::nullopt;
    auto handle = c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_linear_pointwise", ""));
    if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
        !schema_as_expected(handle->schema()))
      return std::nullopt;
    return handle;
  }();
  return op;
}

at::Tensor onednn_linear(const c10::OperatorHandle& op, const at::Tensor& x, const at::Tensor& w,
                         const at::Tensor& bias) {
  std::vector<c10::IValue> stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(w);
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const auto& op = onednn_linear_op();
  // oneDNN's matmul takes float32 and bfloat16; an empty product is ATen's job
  const bool onednn = op.has_value() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                      x.numel() > 0 && w.numel() > 0;
  if (onednn) return onednn_linear(*op, x, w, bias);
  return bias.defined() ? at::addmm(bias, x, w.t()) : at::mm(x, w.t());
}

std::string linear_library() { return onednn_linear_op().has_value() ? "onednn" : "aten"; }

}  // namespace cpu
}  // namespace fusedrnn
