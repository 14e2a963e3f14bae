// IndRNN's kernels (launchers.cuh: DiagonalForward, DiagonalBackward): the
// element-wise recurrence h' = act(xp + u*h) of a whole sequence in one
// launch.  No unit reads another's state, so a thread owns one (batch row,
// unit) pair for every step: no barrier, no exchange, consecutive threads on
// consecutive units (coalesced rows).  The step's arithmetic is the Elman
// RNN's (gate_math.h: rnn_forward on u*h + xp, rnn_backward), as the CPU
// kernels (csrc/cpu/diagonal_recurrence.cpp) and the reference compute it.
// du = sum over rows of dA * h_prev is a product after the recurrence
// (frame::weight_gradients), not a sum across threads here.
#include <fusedrnn/gate_math.h>

#include "device_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

namespace gm = ::fusedrnn::gate_math;

// This thread's (row, unit), or false past the B*H pairs.
__device__ __forceinline__ bool my_pair(int64_t B, int64_t H, int64_t& b, int64_t& u) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return false;
  b = idx / H;
  u = idx - b * H;
  return true;
}

template <typename T>
__global__ void diagonal_forward_kernel(const DiagonalForward a) {
  int64_t b, j;
  if (!my_pair(a.B, a.H, b, j)) return;
  const float u = a.u[j];
  float h = a.h0[b * a.H + j];
  T* out = static_cast<T*>(a.out);
  for (int64_t p = 0; p < a.steps; ++p) {
    if (b >= a.step_rows[p]) continue;  // inactive: sequences are sorted longest first, so h carries on
    const int64_t at = (a.step_offset[p] + b) * a.H + j;
    h = gm::rnn_forward<float>(a.xp[at] + u * h, a.relu);
    out[at] = from_float<T>(h);
  }
  a.h_n[b * a.H + j] = h;
}

template <typename T>
__global__ void diagonal_backward_kernel(const DiagonalBackward a) {
  int64_t b, j;
  if (!my_pair(a.B, a.H, b, j)) return;
  const float u = a.u[j];
  float dh = a.dh_n[b * a.H + j];
  const T* dout = static_cast<const T*>(a.dout);
  const T* out = static_cast<const T*>(a.out);
  for (int64_t p = a.steps - 1; p >= 0; --p) {
    if (b >= a.step_rows[p]) continue;
    const int64_t at = (a.step_offset[p] + b) * a.H + j;
    const float da = gm::rnn_backward<float>(to_float(dout[at]) + dh, to_float(out[at]), a.relu);
    a.dA[at] = da;
    dh = da * u;
  }
  a.dh0[b * a.H + j] = dh;
}

unsigned pair_blocks(int64_t B, int64_t H) {
  return static_cast<unsigned>((B * H + kPointwiseThreads - 1) / kPointwiseThreads);
}

}  // namespace

cudaError_t diagonal_forward(DType dtype, const DiagonalForward& a, cudaStream_t stream) {
  if (a.B * a.H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch("diagonal_forward_kernel", &diagonal_forward_kernel<T>, dim3(pair_blocks(a.B, a.H)),
                  dim3(kPointwiseThreads), 0, stream, a);
  });
}

cudaError_t diagonal_backward(DType dtype, const DiagonalBackward& a, cudaStream_t stream) {
  if (a.B * a.H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch("diagonal_backward_kernel", &diagonal_backward_kernel<T>, dim3(pair_blocks(a.B, a.H)),
                  dim3(kPointwiseThreads), 0, stream, a);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
