// Self-test kernels of the CUDA emulation: each exercises one thing the
// emulator models (cuda_emulation.h), so that tests/test_cuda_emulation.py can
// show it behaves as a GPU does, and that the bugs it is there to find (a
// missing barrier, a barrier in divergent code, a deadlock, a spin-wait that
// never ends) are found.  Plain CUDA, launched through the kernels' own launch
// helpers: tests/test_cuda_emulation.py compiles it with nvcc too.
#include <cooperative_groups.h>
#include <mma.h>

#include "../cuda/device_common.cuh"
#include "selftest.h"

namespace fusedrnn {
namespace emu {
namespace selftest {
namespace {

namespace cg = cooperative_groups;
using ::fusedrnn::cuda::launch;
using ::fusedrnn::cuda::launch_cooperative;

__global__ void block_sum_kernel(const float* in, float* out, bool sync) {
  FUSEDRNN_DYNAMIC_SHARED(smem);
  float* s = reinterpret_cast<float*>(smem);
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  if (sync) __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) s[t] += s[t + half];
    if (sync) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

__global__ void divergent_barrier_kernel(unsigned split) {
  if (threadIdx.x < split) __syncthreads();
}

__global__ void deadlock_kernel() {
  if (threadIdx.x == 0) {
    cg::this_grid().sync();
  } else {
    __syncthreads();
  }
}

// The block barriers around the grid barrier do not order the blocks: without
// grid.sync() a block reads its neighbour's slot before the neighbour wrote it
// (in emulation, where a block runs ahead of the others, every time).
__global__ void grid_exchange_kernel(int* slots, int* seen, bool sync) {
  if (threadIdx.x == 0) slots[blockIdx.x] = static_cast<int>(blockIdx.x) + 1;
  __syncthreads();
  if (sync) cg::this_grid().sync();
  __syncthreads();
  if (threadIdx.x == 0) seen[blockIdx.x] = slots[(blockIdx.x + 1) % gridDim.x];
}

__global__ void warp_ops_kernel(const int* in, int* out) {
  const unsigned t = threadIdx.x, lane = t % 32;
  const unsigned full = 0xffffffffu;
  const int v = in[t];
  int* o = out + t * kWarpResults;
  o[0] = __shfl_sync(full, v, 3);
  o[1] = __shfl_up_sync(full, v, 1);
  o[2] = __shfl_down_sync(full, v, 2);
  o[3] = __shfl_xor_sync(full, v, 5);
  int sum = v;
  for (int d = 16; d > 0; d /= 2) sum += __shfl_xor_sync(full, sum, d);
  o[4] = sum;
  o[5] = static_cast<int>(__ballot_sync(full, v % 3 == 0));
  o[6] = __any_sync(full, v == 7) + 2 * __all_sync(full, v >= 0);
  o[7] = __shfl_down_sync(full, v, 1, 8);
  // the two half-warps shuffle at the same time, each within its own mask
  const unsigned half_mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  o[8] = __shfl_sync(half_mask, v, lane < 16 ? 0 : 16);
}

__global__ void divergent_warp_kernel() {
  if (threadIdx.x % 32 < 16) __syncwarp();
}

template <typename T, typename LA, typename LB>
__global__ void wmma_kernel(const T* a, const T* b, const float* c, float* d, unsigned lda, unsigned ldb,
                            unsigned ldc, bool c_row, bool d_row) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a, lda);
  wmma::load_matrix_sync(fb, b, ldb);
  wmma::load_matrix_sync(fc, c, ldc, c_row ? wmma::mem_row_major : wmma::mem_col_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, ldc, d_row ? wmma::mem_row_major : wmma::mem_col_major);
}

__global__ void atomics_kernel(int* counter, float* fsum, int* flag, int* seen) {
  atomicAdd(counter, 1);
  atomicAdd(fsum, 0.5f);
  if (threadIdx.x == 0) {
    while (atomicAdd(flag, 0) == 0) {
    }
    *seen = atomicAdd(counter, 0);
  }
  if (threadIdx.x == blockDim.x - 1) atomicExch(flag, 1);
}

__global__ void spin_forever_kernel(int* flag) {
  while (atomicAdd(flag, 0) == 0) {
  }
}

__global__ void read_shared_kernel(unsigned char* out, size_t index) {
  FUSEDRNN_DYNAMIC_SHARED(smem);
  out[0] = smem[index];
}

__global__ void narrow_kernel(const float* in, __half* h, __nv_bfloat16* b, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  h[i] = ::fusedrnn::cuda::from_float<__half>(in[i]);
  b[i] = ::fusedrnn::cuda::from_float<__nv_bfloat16>(in[i]);
}

__global__ void widen_kernel(const __half* h, const __nv_bfloat16* b, float* from_h, float* from_b, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  from_h[i] = ::fusedrnn::cuda::to_float(h[i]);
  from_b[i] = ::fusedrnn::cuda::to_float(b[i]);
}

unsigned blocks_for(int64_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

template <typename T>
cudaError_t wmma_typed(bool a_row, bool b_row, bool c_row, bool d_row, const void* a, const void* b, const float* c,
                       float* d, unsigned lda, unsigned ldb, unsigned ldc) {
  using namespace nvcuda;
  const T* ta = static_cast<const T*>(a);
  const T* tb = static_cast<const T*>(b);
  const dim3 one(1), warp(32);
  if (a_row && b_row)
    return launch("wmma_kernel", &wmma_kernel<T, wmma::row_major, wmma::row_major>, one, warp, 0, nullptr, ta, tb, c,
                  d, lda, ldb, ldc, c_row, d_row);
  if (a_row)
    return launch("wmma_kernel", &wmma_kernel<T, wmma::row_major, wmma::col_major>, one, warp, 0, nullptr, ta, tb, c,
                  d, lda, ldb, ldc, c_row, d_row);
  if (b_row)
    return launch("wmma_kernel", &wmma_kernel<T, wmma::col_major, wmma::row_major>, one, warp, 0, nullptr, ta, tb, c,
                  d, lda, ldb, ldc, c_row, d_row);
  return launch("wmma_kernel", &wmma_kernel<T, wmma::col_major, wmma::col_major>, one, warp, 0, nullptr, ta, tb, c,
                d, lda, ldb, ldc, c_row, d_row);
}

}  // namespace

cudaError_t block_sum(const float* in, float* out, unsigned blocks, unsigned threads, bool sync, size_t smem,
                      bool opt_in) {
  if (opt_in) {
    const cudaError_t err =
        cudaFuncSetAttribute(&block_sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return launch("block_sum_kernel", &block_sum_kernel, dim3(blocks), dim3(threads), smem, nullptr, in, out, sync);
}

cudaError_t divergent_barrier(unsigned threads, unsigned split) {
  return launch("divergent_barrier_kernel", &divergent_barrier_kernel, dim3(1), dim3(threads), 0, nullptr, split);
}

cudaError_t deadlock(unsigned threads) {
  return launch_cooperative("deadlock_kernel", &deadlock_kernel, dim3(1), dim3(threads), 0, nullptr);
}

cudaError_t grid_exchange(int* slots, int* seen, unsigned blocks, bool sync, bool cooperative) {
  if (cooperative)
    return launch_cooperative("grid_exchange_kernel", &grid_exchange_kernel, dim3(blocks), dim3(64), 0, nullptr,
                              slots, seen, sync);
  return launch("grid_exchange_kernel", &grid_exchange_kernel, dim3(blocks), dim3(64), 0, nullptr, slots, seen, sync);
}

cudaError_t warp_ops(const int* in, int* out, unsigned threads) {
  return launch("warp_ops_kernel", &warp_ops_kernel, dim3(1), dim3(threads), 0, nullptr, in, out);
}

cudaError_t divergent_warp() {
  return launch("divergent_warp_kernel", &divergent_warp_kernel, dim3(1), dim3(32), 0, nullptr);
}

cudaError_t wmma(int dtype, bool a_row, bool b_row, bool c_row, bool d_row, const void* a, const void* b,
                 const float* c, float* d, unsigned lda, unsigned ldb, unsigned ldc) {
  if (dtype == 1) return wmma_typed<__half>(a_row, b_row, c_row, d_row, a, b, c, d, lda, ldb, ldc);
  if (dtype == 2) return wmma_typed<__nv_bfloat16>(a_row, b_row, c_row, d_row, a, b, c, d, lda, ldb, ldc);
  return cudaErrorInvalidValue;
}

cudaError_t atomics(int* counter, float* fsum, int* flag, int* seen, unsigned threads) {
  return launch("atomics_kernel", &atomics_kernel, dim3(1), dim3(threads), 0, nullptr, counter, fsum, flag, seen);
}

cudaError_t spin_forever(int* flag) {
  return launch("spin_forever_kernel", &spin_forever_kernel, dim3(1), dim3(1), 0, nullptr, flag);
}

cudaError_t read_shared(unsigned char* out, size_t smem, size_t index) {
  return launch("read_shared_kernel", &read_shared_kernel, dim3(1), dim3(1), smem, nullptr, out, index);
}

cudaError_t narrow(const float* in, uint16_t* half_bits, uint16_t* bfloat16_bits, int64_t n) {
  if (n == 0) return cudaSuccess;
  return launch("narrow_kernel", &narrow_kernel, dim3(blocks_for(n, 256)), dim3(256), 0, nullptr, in,
                reinterpret_cast<__half*>(half_bits), reinterpret_cast<__nv_bfloat16*>(bfloat16_bits), n);
}

cudaError_t widen(const uint16_t* half_bits, const uint16_t* bfloat16_bits, float* from_half, float* from_bfloat16,
                  int64_t n) {
  if (n == 0) return cudaSuccess;
  return launch("widen_kernel", &widen_kernel, dim3(blocks_for(n, 256)), dim3(256), 0, nullptr,
                reinterpret_cast<const __half*>(half_bits), reinterpret_cast<const __nv_bfloat16*>(bfloat16_bits),
                from_half, from_bfloat16, n);
}

}  // namespace selftest
}  // namespace emu
}  // namespace fusedrnn
