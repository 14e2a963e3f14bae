// The large products over all time steps (the input projection before the
// recurrence, dX after it), through oneDNN where torch has it.
//
// Why not at::addmm: on this project's development machine (AMD Zen 4) MKL
// runs float32 GEMMs through a generic kernel ("mkl_blas_def_sgemm_kernel_0_zen"
// in perf) at 125-165 GFLOP/s, while oneDNN's matmul, which torch.nn's own
// LSTM uses, runs the same products at 160-205 GFLOP/s.  torch has no public
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

// x [M, K] times w^T (w [N, K], any strides), plus bias [N] if defined.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

// Which library linear() uses for float32: "onednn" or "aten" (for reports).
// FUSEDRNN_CPU_LINEAR=aten forces the fallback (tests run both).
std::string linear_library();

}  // namespace cpu
}  // namespace fusedrnn
