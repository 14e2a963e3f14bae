// The emulator's self-test kernels (selftest.cu), called by module.cpp for
// tests/test_cuda_emulation.py.  Framework-free, like launchers.cuh.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

namespace fusedrnn {
namespace emu {
namespace selftest {

// out[b] = sum of in[b*threads .. +threads) by a tree in shared memory; `sync`
// false drops its barriers.  `smem` bytes of dynamic shared memory (at least
// threads floats), with the opt-in above 48 KB when `opt_in`.
cudaError_t block_sum(const float* in, float* out, unsigned blocks, unsigned threads, bool sync, size_t smem,
                      bool opt_in);
// Threads below `split` reach a __syncthreads the others never reach (they return).
cudaError_t divergent_barrier(unsigned threads, unsigned split);
// Thread 0 waits at grid.sync(), the others at __syncthreads(): neither can complete.
cudaError_t deadlock(unsigned threads);
// Each block's thread 0 writes slots[b] = b+1, the block meets the others at
// grid.sync() (if `sync`; block barriers around it either way), and thread 0
// reads the next block's slot into seen[b].
cudaError_t grid_exchange(int* slots, int* seen, unsigned blocks, bool sync, bool cooperative);
// Warp intrinsics of each of `threads` threads on in[t]: 9 results per thread in out.
constexpr int kWarpResults = 9;
cudaError_t warp_ops(const int* in, int* out, unsigned threads);
// Lanes 0-15 call __syncwarp() with the full mask, lanes 16-31 return.
cudaError_t divergent_warp();
// d = a b + c on one 16x16x16 tile by one warp (dtype 1: float16, 2: bfloat16);
// *_row: the memory layout of each matrix (row- or column-major).
cudaError_t wmma(int dtype, bool a_row, bool b_row, bool c_row, bool d_row, const void* a, const void* b,
                 const float* c, float* d, unsigned lda, unsigned ldb, unsigned ldc);
// Every thread adds 1 to *counter and 0.5 to *fsum; thread 0 spin-waits on
// *flag until the last thread sets it, then reads *counter into *seen.
cudaError_t atomics(int* counter, float* fsum, int* flag, int* seen, unsigned threads);
// One thread spin-waits on *flag, which nobody sets.
cudaError_t spin_forever(int* flag);
// out[0] = byte `index` of a block's `smem` bytes of dynamic shared memory.
cudaError_t read_shared(unsigned char* out, size_t smem, size_t index);
// The kernels' storage conversions (device_common.cuh): float -> float16 /
// bfloat16 bits, and 16-bit values back to float.
cudaError_t narrow(const float* in, uint16_t* half_bits, uint16_t* bfloat16_bits, int64_t n);
cudaError_t widen(const uint16_t* half_bits, const uint16_t* bfloat16_bits, float* from_half, float* from_bfloat16,
                  int64_t n);

}  // namespace selftest
}  // namespace emu
}  // namespace fusedrnn
