#include "dense_product.h"

#include <ATen/ThreadLocalState.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "parallel.h"

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

FixedProduct::FixedProduct(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& add)
    : out_(out), a_(a), b_(b), add_(add), M_(a.size(0)), K_(a.size(1)), N_(b.size(1)) {
  // Tiles of at most size_ x size_ outputs: fixed by the shape, so each
  // element is always the same single-threaded call's result.  The largest
  // side that still leaves a few tiles to share out: BLAS runs a 128-wide tile
  // of a long reduction (the weight gradients over T*B rows) well below its
  // speed on the whole product, a 512-wide one nearer it (benchmarks/RESULTS.md,
  // "measurements behind choices in the code").
  // A small product runs on one thread whatever the team (threads()), so as one tile: each further tile
  // is another BLAS call and three narrowed views, which for the input projection of a few steps (a
  // decoder's short layer calls) cost more than its arithmetic.
  if (small()) {
    size_ = std::max<int64_t>({M_, N_, 1});
  } else {
    size_ = 512;
    while (size_ > 128 && ((M_ + size_ - 1) / size_) * ((N_ + size_ - 1) / size_) < 4) size_ /= 2;
  }
  mt_ = (M_ + size_ - 1) / size_;
  nt_ = (N_ + size_ - 1) / size_;
}

bool FixedProduct::small() const { return M_ * N_ * K_ < (int64_t(1) << 18); }

int FixedProduct::threads() const {
  // one thread for small products (a team would cost more than the work)
  return small() ? 1 : static_cast<int>(std::min<int64_t>(max_threads(), tiles()));
}

void FixedProduct::tile(int64_t i) const {
  const int64_t m0 = (i / nt_) * size_, n0 = (i % nt_) * size_;
  const int64_t mb = std::min(size_, M_ - m0), nb = std::min(size_, N_ - n0);
  const bool whole = tiles() == 1;  // no views to make (a small product's one tile)
  at::Tensor o = whole ? out_ : out_.narrow(0, m0, mb).narrow(1, n0, nb);
  const at::Tensor ai = whole ? a_ : a_.narrow(0, m0, mb), bi = whole ? b_ : b_.narrow(1, n0, nb);
  SequentialBlas one_thread;  // on this thread, whatever the team
  if (add_.defined()) {
    // `add` broadcasts like addmm's input: a row [N] or a matrix [M, N]
    const at::Tensor addi = whole ? add_
                            : add_.dim() == 1 ? add_.narrow(0, n0, nb)
                                              : add_.narrow(0, m0, mb).narrow(1, n0, nb);
    at::addmm_out(o, addi, ai, bi);
  } else {
    at::mm_out(o, ai, bi);
  }
}

void fixed_mm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& add) {
  const FixedProduct product(out, a, b, add);
  // Below autograd: the ops' kernels may be called directly on tensors that require grad (a kernel op
  // called from Python outside any autograd formula), and ATen's out= products refuse those above it.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  // the caller's dispatcher state on every thread (the ATen calls below the
  // autograd layer, as on the caller, whose op call excluded it)
  const at::ThreadLocalState caller_state;
  run_parallel(product.threads(), [&](int tid, int n, Barrier&) {
    at::ThreadLocalStateGuard same_state(caller_state);
    int64_t i0, i1;
    split_range(product.tiles(), tid, n, i0, i1);
    for (int64_t i = i0; i < i1; ++i) product.tile(i);
  });
}

at::Tensor fixed_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  fixed_mm_out(out, a, b);
  return out;
}

// Below this many multiply-adds a product goes to ATen's BLAS: oneDNN's matmul costs 15-45 us a call before
// any arithmetic (more with larger weights), MKL's small-M kernels about 5-20.  Measured on the Intel Xeon
// (1 thread, N = 4K, x [M, K]; oneDNN / MKL us): K = 64, M = 5: 23 / 7; K = 256, M = 2: 64 / 15, M = 16:
// 98 / 81; K = 512, M = 2: 291 / 145, but M = 8 (2^23 multiply-adds): 343 / 425 (benchmarks/RESULTS.md,
// "CPU: session 9").  The short sequences of a decoder's layer calls (T * B <= ~20) are all below it.
constexpr int64_t kOneDnnMinMacs = int64_t(1) << 22;

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const auto& op = onednn_linear_op();
  // oneDNN's matmul takes float32 and bfloat16; an empty product is ATen's job, a small one too (above)
  const bool onednn = op.has_value() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                      x.numel() > 0 && w.numel() > 0 && x.size(0) * w.size(0) * w.size(1) > kOneDnnMinMacs;
  if (onednn) return onednn_linear(*op, x, w, bias);
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  fixed_mm_out(out, x, w.t(), bias);
  return out;
}

std::string linear_library() { return onednn_linear_op().has_value() ? "onednn" : "aten"; }

}  // namespace cpu
}  // namespace fusedrnn
