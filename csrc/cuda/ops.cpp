// The ops of op_schema.h (csrc/include/fusedrnn) for the CUDA dispatch key:
// the thin ATen side of the kernels in csrc/cuda/*.cu.  Each op checks every
// argument (TORCH_CHECK: a RuntimeError naming it), makes x's device current,
// and runs the sequence (sequence.h) on its current stream; the products go to
// cuBLAS through ATen, and any kernel launch error becomes a RuntimeError.
// batch_sizes is a CPU int64 tensor (as in PackedSequence); every other tensor
// is on one CUDA device.  The strategies: strategy.h, csrc/cuda/README.md.
//
// The CPU emulation build (FUSEDRNN_CUDA_EMULATION, csrc/emulation) compiles
// this same file: the kernels then run on CPU tensors, the products are
// ATen's CPU ones, and the ops are the CPU key of the namespace
// `fusedrnn_cuda_emulation` (the CPU key of fusedrnn_C is the CPU kernels').
// What differs is confined to the "kernel device" section below.
#include <ATen/ATen.h>
#include <torch/library.h>
#ifndef FUSEDRNN_CUDA_EMULATION
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <string>
#include <tuple>
#include <vector>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/op_schema.h"
#include "sequence.h"

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
#endif

// ---------------------------------------------------------------------------
// argument checks and conversions
// ---------------------------------------------------------------------------

using checks::Geometry;
using OptionalTensor = c10::optional<at::Tensor>;

void check_kernel_device(const at::Tensor& x) {
  TORCH_CHECK(on_kernel_device(x), "fusedrnn_C: x must be ", kDeviceWanted, ", got device ", x.device());
}

// The cell table's cells these kernels do not run yet: the layer-normalised cells and sLSTM have CPU and
// Triton kernels only (fusedrnn/backends/cuda.py does not list them, so "auto" never sends them here).
void check_has_kernels(const Cell& cell, const std::string& family) {
  TORCH_CHECK(!cell.layer_norm() && !cell.block_diagonal(), "fusedrnn_C: the CUDA kernels have no ", family,
              " cell (it runs on the cpu, triton and reference backends)");
}

// The shared checks (op_checks.h), after the CUDA-specific ones on x.
Geometry check_call(const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
                    const OptionalTensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const OptionalTensor& b_ih, const OptionalTensor& b_hh, const OptionalTensor& w_peep,
                    const OptionalTensor& w_proj, const OptionalTensor& batch_sizes,
                    const OptionalTensor& w_extra = c10::nullopt) {
  check_kernel_device(x);
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "fusedrnn_C: the CUDA kernels take float32, float16 or bfloat16, got ", dt);
  const Geometry g =
      checks::check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
  check_has_kernels(g.cell, family);
  return g;
}

at::Tensor value_or_undefined(const OptionalTensor& t) { return checks::defined(t) ? *t : at::Tensor(); }

// No CUDA kernel runs zoneout yet: the cpu and reference backends do (fusedrnn/zoneout.py).
void refuse_zoneout(const OptionalTensor& zoneout_mask) {
  TORCH_CHECK(!checks::defined(zoneout_mask), "fusedrnn_C: the CUDA kernels have no zoneout yet: zoneout_mask must "
              "be None (the cpu and reference backends run zoneout)");
}

frame::LayerWeights weights_of(const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const OptionalTensor& w_peep,
                               const OptionalTensor& w_proj) {
  // no w_extra: the cells that have one (the layer-normalised) are refused (check_has_kernels)
  return frame::LayerWeights{w_ih, w_hh, value_or_undefined(b_ih), value_or_undefined(b_hh),
                             value_or_undefined(w_peep), value_or_undefined(w_proj), at::Tensor()};
}

// [rows, width] back to x's leading shape
at::Tensor with_leading_shape(const at::Tensor& rows, const at::Tensor& x, int64_t width) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(width);
  return rows.reshape(shape);
}

// ---------------------------------------------------------------------------
// the ops
// ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const std::string& family, const std::string& mode, const at::Tensor& x, const at::Tensor& h0,
    const OptionalTensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptionalTensor& b_ih,
    const OptionalTensor& b_hh, const OptionalTensor& w_peep, const OptionalTensor& w_proj,
    const OptionalTensor& batch_sizes, bool reverse, const std::string& strategy, bool poison, bool for_backward,
    const OptionalTensor& w_extra, const OptionalTensor& zoneout_mask) {
  // w_extra belongs to the layer-normalised cells only, which check_call refuses
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
  refuse_zoneout(zoneout_mask);
  const Strategy requested = parse_strategy(strategy);
  const KernelDevice device(x.device());
  const frame::Steps s(g.sizes, reverse);
  const Call call{g, s, requested, device.stream(), device.ordinal(), poison};
  const ForwardOut r = sequence_forward(call, x, h0, value_or_undefined(c0),
                                        weights_of(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj), for_backward);
  const at::Tensor c_n = r.c_n.defined() ? r.c_n.to(x.scalar_type()) : x.new_empty({0});
  const at::Tensor workspace =
      for_backward ? with_leading_shape(r.workspace, x, g.cell.workspace_blocks() * g.H) : x.new_empty({0});
  return {with_leading_shape(r.out, x, g.Hout), r.h_n.to(x.scalar_type()), c_n, workspace};
}

std::vector<at::Tensor> backward(const std::string& family, const std::string& mode, const at::Tensor& grad_out,
                                 const at::Tensor& grad_hn, const OptionalTensor& grad_cn, const at::Tensor& x,
                                 const at::Tensor& h0, const OptionalTensor& c0, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                 const OptionalTensor& w_peep, const OptionalTensor& w_proj,
                                 const OptionalTensor& batch_sizes, bool reverse, const at::Tensor& out,
                                 const at::Tensor& workspace, const std::string& strategy, bool poison,
                                 bool need_dx, bool need_dweights, const OptionalTensor& w_extra,
                                 const OptionalTensor& zoneout_mask) {
  const Geometry g = check_call(family, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, w_extra);
  refuse_zoneout(zoneout_mask);
  checks::check_backward_call(g, x, grad_out, grad_hn, grad_cn, out, workspace);
  const Strategy requested = parse_strategy(strategy);
  const KernelDevice device(x.device());
  const frame::Steps s(g.sizes, reverse);
  const Call call{g, s, requested, device.stream(), device.ordinal(), poison};
  const BackwardOut r = sequence_backward(call, grad_out, grad_hn, value_or_undefined(grad_cn), x, h0,
                                          value_or_undefined(c0), weights_of(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj),
                                          out, workspace, need_dx, need_dweights);
  return frame::op_result(r, x);
}

// What "auto" runs: "persistent" or "per_step: <why not persistent>".
template <Choice (*choose_for)(const Cell&, const ProblemSizes&)>
std::string chosen_strategy(const std::string& family, const std::string& mode, const at::Tensor& x,
                            const at::Tensor& h0, const at::Tensor& w_hh, const OptionalTensor& w_proj,
                            int64_t steps) {
  check_kernel_device(x);
  const checks::QuerySizes q = checks::check_strategy_query(family, mode, h0, w_hh, w_proj, steps);
  check_has_kernels(q.cell, family);
  // no recurrent product to choose a strategy for: one element-wise kernel (diagonal.cu), as on the CPU
  if (q.cell.diagonal()) return "elementwise";
  const KernelDevice device(x.device());
  const ProblemSizes n{q.B, q.H, q.P, q.steps, checks::defined(w_proj), storage_dtype(x.scalar_type()),
                       device.ordinal()};
  return describe(choose_for(q.cell, n));
}

void implement(torch::Library& m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("forward_strategy", &chosen_strategy<&choose_forward>);
  m.impl("backward_strategy", &chosen_strategy<&choose_backward>);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

#ifdef FUSEDRNN_CUDA_EMULATION
TORCH_LIBRARY_FRAGMENT(fusedrnn_cuda_emulation, m) { fusedrnn::schema::define_ops(m); }
TORCH_LIBRARY_IMPL(fusedrnn_cuda_emulation, CPU, m) { fusedrnn::cuda::implement(m); }
#else
// the schema is defined in csrc/fusedrnn.cpp, next to the CPU kernels' implementations
TORCH_LIBRARY_IMPL(fusedrnn_C, CUDA, m) { fusedrnn::cuda::implement(m); }
#endif
