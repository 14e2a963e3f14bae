// The large products over all time steps (the input projection before the
// recurrence, dX after it), through oneDNN where torch has it.
//
// Why not at::addmm: on this project's development machine (AMD Zen 4) MKL
// runs float32 GEMMs through a generic kernel ("mkl_blas_def_sgemm_kernel_0_zen"
// in perf), clearly slower than oneDNN's matmul, which torch.nn's own LSTM
// uses, on the same products (benchmarks/RESULTS.md, "measurements behind
// choices in the code").  torch has no public
// C++ entry to oneDNN's matmul for dense float32 tensors, but it registers one
// as a dispatcher op, mkldnn::_linear_pointwise (Inductor calls it).  We find
// it by name at run time, check its schema, and fall back to at::addmm / at::mm
// where it is missing (torch built without oneDNN, a changed schema) or the
// dtype is one oneDNN does not cover (float64).  Both paths are exact float32
// products (no reduced-precision "fast math"); the tests compare against a
// float64 reference either way.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fusedrnn {
namespace cpu {

// x [M, K] times w^T (w [N, K], any strides), plus bias [N] if defined: oneDNN for the large products,
// ATen's BLAS (fixed_mm_out) for small ones, where oneDNN's fixed cost per call exceeds the arithmetic.
// Bitwise the same with any number of threads: oneDNN's matmul splits no
// reduction over threads at any shape measured (M 1..3000, K 16..4096, N
// 3..4096, 1 vs 2 threads); the ATen path goes through fixed_mm_out.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

// out = a @ b (+ add, if defined), the same bits whatever the number of
// threads.  MKL's GEMM is not: for a long reduction (K >= ~1024: the weight
// gradients over T*B rows, the per-step products of the gemm strategy with
// K = G*H) it splits K over its threads and sums the parts in a different
// order with 1 and 2 threads (measured: differences of 1e-7 to 2e-6 in the
// gradients of LSTM, LSTMP and GRU, 3e-5 in an RNN's dW at T*B = 12800).  Here the
// output is cut into tiles fixed by the shape alone, each computed by one
// single-threaded BLAS call over the whole K, the tiles spread over threads.
// `out` may be a strided view (rows of a larger buffer).  Cost, measured with
// 1 thread against MKL's whole-matrix call: the gemm strategy's training step
// a little slower, the fused ones unchanged (benchmarks/RESULTS.md,
// "measurements behind choices in the code").
void fixed_mm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                  const at::Tensor& add = at::Tensor());
at::Tensor fixed_mm(const at::Tensor& a, const at::Tensor& b);

// fixed_mm_out's tiles, for a caller that runs them inside a parallel region of its own (the
// layer-normalised cells' recurrence: one region for all steps, layer_norm_recurrence.cpp):
// tile(i) for i in [0, tiles()), each on one thread, in any order and split, gives the same bits.
// The caller's thread-local ATen state must be on the thread (at::ThreadLocalStateGuard).
class FixedProduct {
 public:
  FixedProduct(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& add = at::Tensor());
  int64_t tiles() const { return mt_ * nt_; }
  // how many threads fixed_mm_out gives the product (one for a small one)
  int threads() const;
  void tile(int64_t i) const;
  // whether the product is small enough for one thread and one tile (a function of the shape alone)
  bool small() const;

 private:
  at::Tensor out_, a_, b_, add_;  // held, not referenced: callers pass views made for the call
  int64_t M_, K_, N_, size_, mt_, nt_;
};

// Which library linear() uses for float32: "onednn" or "aten" (for reports).
// FUSEDRNN_CPU_LINEAR=aten forces the fallback (tests run both).
std::string linear_library();

}  // namespace cpu
}  // namespace fusedrnn
