// CPU emulation of the CUDA device API that the kernels of csrc/cuda use, so
// that the very same .cu sources compile with the host C++ compiler and run
// on CPU tensors (the `cuda` backend under FUSEDRNN_CUDA_EMULATE=1; see
// csrc/cuda/README.md, "Emulation").  Framework-free: no ATen, no torch.
//
// Model (what makes a kernel bug visible here):
//  * every CUDA thread is a fiber with its own stack; a block's threads run
//    concurrently and are released together at each __syncthreads, and every
//    block of a cooperative launch is resident at once, released together at
//    grid.sync().  The schedule is deterministic (thread order by default,
//    FUSEDRNN_EMU_SCHEDULE=reverse|shuffle[:seed] for others), each fiber runs
//    until it blocks, so a missing barrier makes a thread read what its
//    neighbours have not written yet: a wrong result, not a lucky one.  And a
//    block runs as far as it can before the others move (threads released
//    from a barrier go first), so does a block reading another block's data
//    without a grid.sync between.
//  * misuse a GPU leaves undefined is an error naming the kernel (a
//    std::runtime_error, a RuntimeError in Python): a barrier some threads of
//    the block never reach (they exited, or wait elsewhere: a deadlock), a
//    grid.sync() outside a cooperative launch, warp-synchronous calls with
//    divergent masks or arguments, misaligned WMMA pointers, more dynamic
//    shared memory than the launch asked for is for ASan to see (the block's
//    buffer is exactly that size), a kernel in which nothing completes (no
//    barrier, warp operation or thread exit) for FUSEDRNN_EMU_TIMEOUT seconds
//    (spin-waits progress through atomics, __ldcg and __nanosleep, which let
//    other threads run).
//  * warp intrinsics and WMMA operations are collectives of the lanes named
//    in their mask: a lane waits until all of them arrived, as on Volta and
//    later (independent thread scheduling: lanes of a warp do not run in lock
//    step, so code that assumes they do breaks here too).
//  * memory is coherent and sequentially consistent; weak GPU memory ordering,
//    caching (__ldcg vs plain loads), --use_fast_math and real timing are what
//    only a GPU shows.
//
// Only what the kernels use is here: add to it, with a test in
// tests/test_cuda_emulation.py, when a kernel needs more.
#pragma once

#ifndef FUSEDRNN_CUDA_EMULATION
#define FUSEDRNN_CUDA_EMULATION 1
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------
// qualifiers
// ---------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
// `__shared__` is deliberately not defined: static shared arrays cannot be made
// per block on the host; kernels take dynamic shared memory through
// FUSEDRNN_DYNAMIC_SHARED (below).

// ---------------------------------------------------------------------------
// runtime API types
// ---------------------------------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
typedef enum cudaError cudaError_t;

typedef struct CUstream_st* cudaStream_t;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*func)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func, int block_size,
                                                          size_t dynamic_smem);
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*func)(P...), int block_size,
                                                          size_t dynamic_smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, reinterpret_cast<const void*>(func), block_size,
                                                       dynamic_smem);
}
// cudaLaunchKernel / cudaLaunchCooperativeKernel / <<<>>> are not emulated:
// launch through fusedrnn::cuda::launch / launch_cooperative (device_common.cuh),
// which know the kernel's parameter types.

namespace fusedrnn {
namespace emu {

// ---------------------------------------------------------------------------
// the running thread
// ---------------------------------------------------------------------------

// What a kernel sees of the CUDA thread it runs as.  Written by the launcher
// before the thread starts, constant while it runs.
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned char* shared;  // the block's dynamic shared memory (exactly the launch's size)
  size_t shared_bytes;
};

// The OS thread's current CUDA thread: a __thread pointer, read and written
// with relaxed atomics only so that ThreadSanitizer, which sees each fiber as
// a thread, does not take the scheduler's bookkeeping for a race.
extern __thread ThreadContext* current_context;

__forceinline__ const ThreadContext& current() { return *__atomic_load_n(&current_context, __ATOMIC_RELAXED); }

// A kernel error (misuse a GPU leaves undefined): ends the kernel, the launch raises it.
[[noreturn]] void fail(const char* format, ...) __attribute__((format(printf, 1, 2)));

void syncthreads();  // __syncthreads: every thread of the block
void grid_sync();    // cooperative_groups::this_grid().sync(): every thread of the grid
void yield();        // let the other threads run (spin-waits: atomics, __nanosleep)
void count_load();   // __ldcg and friends: a yield every few thousand loads

// A warp-synchronous operation of the lanes in `mask` (which must include the
// caller).  Each lane passes `lane_data` (its inputs and where its results go)
// and a `signature` of the arguments that must be equal across the lanes (op
// and uniform arguments); once every lane of the mask arrived, one of them runs
// fn(lane_data of lanes 0..31 (null outside the mask), mask) and all continue.
using WarpFn = void (*)(void* const* lane_data, unsigned mask);
void warp_collective(unsigned mask, const char* what, uint64_t signature, void* lane_data, WarpFn fn);

// ---------------------------------------------------------------------------
// launches
// ---------------------------------------------------------------------------

struct KernelBody {
  void (*run)(const void* closure);  // calls the kernel with its arguments
  const void* closure;
};

// Runs a kernel on the calling OS thread.  Returns the CUDA error a GPU launch
// returns for a bad configuration (grid, block, shared memory, cooperative grid
// too large); throws std::runtime_error naming the kernel when the kernel
// fails (see the top of this file).
cudaError_t launch_kernel(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, bool cooperative,
                          const void* func, const KernelBody& body);

// `args` are the kernel's parameters (device_common.cuh's launch helpers converted them).
template <typename... Params>
cudaError_t launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
                   bool cooperative, Params... args) {
  struct Closure {
    void (*kernel)(Params...);
    std::tuple<Params...> params;
  };
  const Closure closure{kernel, std::tuple<Params...>(args...)};
  // each thread calls the kernel with its own copies of the parameters, as on a GPU
  const KernelBody body{[](const void* p) {
                          const Closure& c = *static_cast<const Closure*>(p);
                          std::apply(c.kernel, c.params);
                        },
                        &closure};
  return launch_kernel(name, grid, block, dynamic_smem, cooperative, reinterpret_cast<const void*>(kernel), body);
}

// The emulated device (cudaDeviceGetAttribute, occupancy, launch limits): an
// H100 SXM by default; tests change it to reach the planner's other answers.
struct DeviceProperties {
  int multiprocessors = 132;
  int max_threads_per_block = 1024;
  int max_threads_per_multiprocessor = 2048;
  int max_blocks_per_multiprocessor = 32;
  int shared_per_block = 48 * 1024;          // without the opt-in
  int shared_per_block_optin = 227 * 1024;   // cudaFuncSetAttribute's maximum
  int shared_per_multiprocessor = 228 * 1024;
  int reserved_shared_per_block = 1024;      // the runtime's own, per resident block
  int cooperative_launch = 1;
};
DeviceProperties& device_properties();

}  // namespace emu
}  // namespace fusedrnn

// ---------------------------------------------------------------------------
// built-in variables and synchronisation
// ---------------------------------------------------------------------------

#define threadIdx (::fusedrnn::emu::current().thread_idx)
#define blockIdx (::fusedrnn::emu::current().block_idx)
#define blockDim (::fusedrnn::emu::current().block_dim)
#define gridDim (::fusedrnn::emu::current().grid_dim)
#define warpSize 32

// `extern __shared__ unsigned char name[]` of a kernel: the block's dynamic shared memory.
#define FUSEDRNN_DYNAMIC_SHARED(name) unsigned char* const name = ::fusedrnn::emu::current().shared

__forceinline__ void __syncthreads() { ::fusedrnn::emu::syncthreads(); }
__forceinline__ void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
__forceinline__ void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
__forceinline__ void __nanosleep(unsigned) { ::fusedrnn::emu::yield(); }

// Loads "cached globally" (around L1): plain loads here, which also let a
// spin-wait on them make progress.
template <typename T>
__forceinline__ T __ldcg(const T* p) {
  ::fusedrnn::emu::count_load();
  return *p;
}
template <typename T>
__forceinline__ T __ldg(const T* p) {
  ::fusedrnn::emu::count_load();
  return *p;
}

// ---------------------------------------------------------------------------
// bit casts, float math
// ---------------------------------------------------------------------------

__forceinline__ float __int_as_float(int v) { return __builtin_bit_cast(float, v); }
__forceinline__ int __float_as_int(float v) { return __builtin_bit_cast(int, v); }
__forceinline__ float __uint_as_float(unsigned v) { return __builtin_bit_cast(float, v); }
__forceinline__ unsigned __float_as_uint(float v) { return __builtin_bit_cast(unsigned, v); }

// ---------------------------------------------------------------------------
// atomics (device scope, relaxed, as CUDA's); each lets other threads run, so
// that a spin-wait on an atomic progresses
// ---------------------------------------------------------------------------

namespace fusedrnn {
namespace emu {

template <typename T>
__forceinline__ T atomic_update(T* address, T (*op)(T, T), T value) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 32- and 64-bit values");
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits* p = reinterpret_cast<Bits*>(address);
  Bits old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    const Bits next = __builtin_bit_cast(Bits, op(__builtin_bit_cast(T, old), value));
    if (__atomic_compare_exchange_n(p, &old, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) break;
  }
  yield();
  return __builtin_bit_cast(T, old);
}

}  // namespace emu
}  // namespace fusedrnn

#define FUSEDRNN_EMU_ATOMIC(NAME, EXPR)                                                   \
  template <typename T>                                                                   \
  __forceinline__ T NAME(T* address, T value) {                                           \
    return ::fusedrnn::emu::atomic_update<T>(address, [](T a, T b) -> T { return EXPR; }, \
                                             value);                                      \
  }
FUSEDRNN_EMU_ATOMIC(atomicAdd, a + b)
FUSEDRNN_EMU_ATOMIC(atomicSub, a - b)
FUSEDRNN_EMU_ATOMIC(atomicExch, ((void)a, b))
FUSEDRNN_EMU_ATOMIC(atomicMax, a < b ? b : a)
FUSEDRNN_EMU_ATOMIC(atomicMin, b < a ? b : a)
#undef FUSEDRNN_EMU_ATOMIC

template <typename T>
__forceinline__ T atomicCAS(T* address, T compare, T value) {
  static_assert(std::is_integral<T>::value, "atomicCAS on integers");
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  ::fusedrnn::emu::yield();
  return compare;  // the old value, whether or not it was swapped
}

// ---------------------------------------------------------------------------
// float16 and bfloat16: storage types without operators or implicit
// conversions, as torch compiles CUDA code (-D__CUDA_NO_HALF_OPERATORS__,
// -D__CUDA_NO_HALF_CONVERSIONS__, -D__CUDA_NO_BFLOAT16_CONVERSIONS__); the
// conversions round to nearest even, NaN becomes the canonical 0x7fff.
// ---------------------------------------------------------------------------

struct alignas(2) __half {
  unsigned short __x;
};
typedef __half half;

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
};

namespace fusedrnn {
namespace emu {

__forceinline__ unsigned short float_to_half_bits(float f) {
  const uint32_t x = __builtin_bit_cast(uint32_t, f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<unsigned short>(a > 0x7f800000u ? 0x7fffu : (sign | 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520 rounds to inf
  uint32_t h, rest, half_ulp;
  if (a >= 0x38800000u) {  // normal half: rebias the exponent, drop 13 mantissa bits
    const uint32_t r = a - (112u << 23);
    h = r >> 13, rest = r & 0x1fffu, half_ulp = 0x1000u;
  } else {  // subnormal half (or zero): units of 2^-24
    const uint32_t e = a >> 23;
    if (e < 102) return static_cast<unsigned short>(sign);  // below 2^-25: rounds to zero
    const uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    h = m >> shift, rest = m & ((1u << shift) - 1), half_ulp = 1u << (shift - 1);
  }
  if (rest > half_ulp || (rest == half_ulp && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<unsigned short>(sign | h);
}

__forceinline__ float half_bits_to_float(unsigned short h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, v) | sign);
  }
  if (e == 31) return __builtin_bit_cast(float, sign | 0x7f800000u | (m << 13));
  return __builtin_bit_cast(float, sign | ((e + 112u) << 23) | (m << 13));
}

__forceinline__ unsigned short float_to_bfloat16_bits(float f) {
  const uint32_t x = __builtin_bit_cast(uint32_t, f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return static_cast<unsigned short>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

__forceinline__ float bfloat16_bits_to_float(unsigned short b) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(b) << 16);
}

}  // namespace emu
}  // namespace fusedrnn

__forceinline__ float __half2float(__half h) { return ::fusedrnn::emu::half_bits_to_float(h.__x); }
__forceinline__ __half __float2half_rn(float f) { return __half{::fusedrnn::emu::float_to_half_bits(f)}; }
__forceinline__ __half __float2half(float f) { return __float2half_rn(f); }
__forceinline__ unsigned short __half_as_ushort(__half h) { return h.__x; }
__forceinline__ __half __ushort_as_half(unsigned short v) { return __half{v}; }

__forceinline__ float __bfloat162float(__nv_bfloat16 b) { return ::fusedrnn::emu::bfloat16_bits_to_float(b.__x); }
__forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{::fusedrnn::emu::float_to_bfloat16_bits(f)};
}
__forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
__forceinline__ unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
__forceinline__ __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16{v}; }

// ---------------------------------------------------------------------------
// warp intrinsics: collectives of the lanes in the mask
// ---------------------------------------------------------------------------

namespace fusedrnn {
namespace emu {

enum ShuffleMode : int { shfl_idx, shfl_up, shfl_down, shfl_xor };

struct ShuffleLane {
  uint64_t in, out;
  int arg;  // source lane, delta or lane mask
};

template <ShuffleMode MODE>
void shuffle_fn(void* const* lane_data, unsigned mask, int width) {
  for (int lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    ShuffleLane& me = *static_cast<ShuffleLane*>(lane_data[lane]);
    const int base = lane & ~(width - 1), arg = me.arg;
    int src;
    if (MODE == shfl_idx) {
      src = base + (arg & (width - 1));
    } else if (MODE == shfl_up) {
      src = lane - arg < base ? lane : lane - arg;
    } else if (MODE == shfl_down) {
      src = lane + arg >= base + width ? lane : lane + arg;
    } else {
      src = lane ^ arg;
      if (src < base || src >= base + width) src = lane;
    }
    if (!(mask >> src & 1u)) fail("lane %d reads lane %d through a shuffle, but lane %d is not in the mask %#x",
                                  lane, src, src, mask);
    me.out = static_cast<ShuffleLane*>(lane_data[src])->in;
  }
}

template <ShuffleMode MODE, int WIDTH>
void shuffle_width_fn(void* const* lane_data, unsigned mask) {
  shuffle_fn<MODE>(lane_data, mask, WIDTH);
}

template <ShuffleMode MODE>
WarpFn shuffle_for_width(int width) {
  switch (width) {
    case 1: return &shuffle_width_fn<MODE, 1>;
    case 2: return &shuffle_width_fn<MODE, 2>;
    case 4: return &shuffle_width_fn<MODE, 4>;
    case 8: return &shuffle_width_fn<MODE, 8>;
    case 16: return &shuffle_width_fn<MODE, 16>;
    case 32: return &shuffle_width_fn<MODE, 32>;
  }
  fail("shuffle width %d is not a power of two in [1, 32]", width);
}

template <ShuffleMode MODE, typename T>
__forceinline__ T shuffle(const char* what, unsigned mask, T value, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move values of up to 8 bytes");
  ShuffleLane me{0, 0, arg};
  memcpy(&me.in, &value, sizeof(T));
  warp_collective(mask, what, (static_cast<uint64_t>(MODE) << 32) | static_cast<uint64_t>(width) << 8 | sizeof(T),
                  &me, shuffle_for_width<MODE>(width));
  T out;
  memcpy(&out, &me.out, sizeof(T));
  return out;
}

struct VoteLane {
  int predicate;
  unsigned ballot;
};

inline void vote_fn(void* const* lane_data, unsigned mask) {
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; ++lane)
    if ((mask >> lane & 1u) && static_cast<VoteLane*>(lane_data[lane])->predicate) ballot |= 1u << lane;
  for (int lane = 0; lane < 32; ++lane)
    if (mask >> lane & 1u) static_cast<VoteLane*>(lane_data[lane])->ballot = ballot;
}

__forceinline__ unsigned vote(const char* what, unsigned mask, int predicate) {
  VoteLane me{predicate, 0};
  warp_collective(mask, what, 0x766f7465u, &me, &vote_fn);
  return me.ballot;
}

inline void no_op_fn(void* const*, unsigned) {}

}  // namespace emu
}  // namespace fusedrnn

template <typename T>
__forceinline__ T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::fusedrnn::emu::shuffle<::fusedrnn::emu::shfl_idx>("__shfl_sync", mask, var, src_lane, width);
}
template <typename T>
__forceinline__ T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::fusedrnn::emu::shuffle<::fusedrnn::emu::shfl_up>("__shfl_up_sync", mask, var, static_cast<int>(delta),
                                                            width);
}
template <typename T>
__forceinline__ T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::fusedrnn::emu::shuffle<::fusedrnn::emu::shfl_down>("__shfl_down_sync", mask, var,
                                                              static_cast<int>(delta), width);
}
template <typename T>
__forceinline__ T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::fusedrnn::emu::shuffle<::fusedrnn::emu::shfl_xor>("__shfl_xor_sync", mask, var, lane_mask, width);
}
__forceinline__ unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::fusedrnn::emu::vote("__ballot_sync", mask, predicate);
}
__forceinline__ int __any_sync(unsigned mask, int predicate) {
  return ::fusedrnn::emu::vote("__any_sync", mask, predicate) != 0;
}
__forceinline__ int __all_sync(unsigned mask, int predicate) {
  return ::fusedrnn::emu::vote("__all_sync", mask, predicate) == mask;
}
__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) {
  ::fusedrnn::emu::warp_collective(mask, "__syncwarp", 0x73796e63u, nullptr, &::fusedrnn::emu::no_op_fn);
}

// ---------------------------------------------------------------------------
// cooperative groups (the grid and the block)
// ---------------------------------------------------------------------------

namespace cooperative_groups {

class grid_group {
 public:
  void sync() const { ::fusedrnn::emu::grid_sync(); }
  bool is_valid() const { return true; }
  unsigned long long size() const {
    const auto& c = ::fusedrnn::emu::current();
    return 1ull * c.grid_dim.x * c.grid_dim.y * c.grid_dim.z * c.block_dim.x * c.block_dim.y * c.block_dim.z;
  }
};

class thread_block {
 public:
  void sync() const { ::fusedrnn::emu::syncthreads(); }
  dim3 group_dim() const { return ::fusedrnn::emu::current().block_dim; }
  uint3 group_index() const { return ::fusedrnn::emu::current().block_idx; }
  uint3 thread_index() const { return ::fusedrnn::emu::current().thread_idx; }
};

inline grid_group this_grid() { return grid_group(); }
inline thread_block this_thread_block() { return thread_block(); }
template <typename Group>
void sync(const Group& g) {
  g.sync();
}

}  // namespace cooperative_groups

// ---------------------------------------------------------------------------
// WMMA: the m16n16k16 tile with 16-bit inputs and float32 accumulation.
//
// A fragment holds 8 of the tile's 256 elements in each of the 32 lanes: lane l
// holds logical elements l*8 .. l*8+7 in row-major order ((row, column) of A,
// (k, n) of B, (m, n) of the accumulator).  The hardware order differs (and is
// unspecified); kernels may only do element-wise work on x[], which is right
// under any order.  load/store/mma are collectives of the whole warp with
// equal pointers, leading dimensions and layouts, as the CUDA guide requires;
// the pointer must be 256-bit aligned and ldm a multiple of 16 bytes.
// ---------------------------------------------------------------------------

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has the m16n16k16 WMMA shape only");
  static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                      : (std::is_same<T, __half>::value ||
                                                         std::is_same<T, __nv_bfloat16>::value),
                "WMMA fragments: __half or __nv_bfloat16 inputs, float accumulators");

 public:
  using element_type = T;
  static constexpr int num_elements = 8;
  T x[num_elements];
};

}  // namespace wmma
}  // namespace nvcuda

namespace fusedrnn {
namespace emu {

constexpr int kWmmaTile = 16;

__forceinline__ float wmma_to_float(float v) { return v; }
__forceinline__ float wmma_to_float(__half v) { return __half2float(v); }
__forceinline__ float wmma_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Memory offset of logical element (r, c) for a matrix stored row- or column-major.
__forceinline__ size_t wmma_offset(int r, int c, unsigned ldm, bool row_major) {
  return row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
}

template <typename T>
struct WmmaMemLane {
  T* fragment_x;  // the lane's 8 elements
  T* memory;
  unsigned ldm;
};

template <typename T, bool ROW_MAJOR, bool STORE>
void wmma_memory_fn(void* const* lane_data, unsigned) {
  for (int lane = 0; lane < 32; ++lane) {
    auto& me = *static_cast<WmmaMemLane<T>*>(lane_data[lane]);
    for (int i = 0; i < 8; ++i) {
      const int e = lane * 8 + i;
      T* p = me.memory + wmma_offset(e / kWmmaTile, e % kWmmaTile, me.ldm, ROW_MAJOR);
      if (STORE) {
        *p = me.fragment_x[i];
      } else {
        me.fragment_x[i] = *p;
      }
    }
  }
}

template <typename T>
__forceinline__ void wmma_check(const char* what, const void* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    fail("%s: pointer %p is not 256-bit aligned", what, p);
  if ((ldm * sizeof(T)) % 16 != 0 || ldm < static_cast<unsigned>(kWmmaTile))
    fail("%s: ldm %u is not a multiple of 16 bytes of at least 16 elements", what, ldm);
}

template <typename T, bool ROW_MAJOR, bool STORE>
__forceinline__ void wmma_memory(const char* what, T* fragment_x, T* memory, unsigned ldm) {
  wmma_check<T>(what, memory, ldm);
  WmmaMemLane<T> me{fragment_x, memory, ldm};
  const uint64_t signature = reinterpret_cast<uintptr_t>(memory) ^ (static_cast<uint64_t>(ldm) << 48) ^
                             (static_cast<uint64_t>(ROW_MAJOR) << 47) ^ (static_cast<uint64_t>(STORE) << 46);
  warp_collective(0xffffffffu, what, signature, &me, &wmma_memory_fn<T, ROW_MAJOR, STORE>);
}

template <typename T>
struct WmmaMmaLane {
  float* d;
  const T* a;
  const T* b;
  const float* c;
};

template <typename T>
void wmma_mma_fn(void* const* lane_data, unsigned) {
  float A[kWmmaTile][kWmmaTile], B[kWmmaTile][kWmmaTile], C[kWmmaTile][kWmmaTile];
  for (int lane = 0; lane < 32; ++lane) {
    const auto& me = *static_cast<WmmaMmaLane<T>*>(lane_data[lane]);
    for (int i = 0; i < 8; ++i) {
      const int e = lane * 8 + i, r = e / kWmmaTile, c = e % kWmmaTile;
      A[r][c] = wmma_to_float(me.a[i]);
      B[r][c] = wmma_to_float(me.b[i]);
      C[r][c] = me.c[i];
    }
  }
  // products of 16-bit values are exact in float32; the sum is float32, in k order
  for (int lane = 0; lane < 32; ++lane) {
    const auto& me = *static_cast<WmmaMmaLane<T>*>(lane_data[lane]);
    for (int i = 0; i < 8; ++i) {
      const int e = lane * 8 + i, r = e / kWmmaTile, c = e % kWmmaTile;
      float s = C[r][c];
      for (int k = 0; k < kWmmaTile; ++k) s += A[r][k] * B[k][c];
      me.d[i] = s;
    }
  }
}

}  // namespace emu
}  // namespace fusedrnn

namespace nvcuda {
namespace wmma {

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
__forceinline__ void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& value) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = value;
}

template <typename Use, typename T, typename Layout>
__forceinline__ void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load names its layout_t");
  ::fusedrnn::emu::wmma_memory<T, std::is_same<Layout, row_major>::value, false>(
      "wmma::load_matrix_sync", f.x, const_cast<T*>(p), ldm);
}

__forceinline__ void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                                      layout_t layout) {
  if (layout == mem_row_major) {
    ::fusedrnn::emu::wmma_memory<float, true, false>("wmma::load_matrix_sync", f.x, const_cast<float*>(p), ldm);
  } else {
    ::fusedrnn::emu::wmma_memory<float, false, false>("wmma::load_matrix_sync", f.x, const_cast<float*>(p), ldm);
  }
}

__forceinline__ void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                                       layout_t layout) {
  float* x = const_cast<float*>(f.x);
  if (layout == mem_row_major) {
    ::fusedrnn::emu::wmma_memory<float, true, true>("wmma::store_matrix_sync", x, p, ldm);
  } else {
    ::fusedrnn::emu::wmma_memory<float, false, true>("wmma::store_matrix_sync", x, p, ldm);
  }
}

template <typename T, typename LA, typename LB>
__forceinline__ void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                              const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                              const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                              const fragment<accumulator, 16, 16, 16, float>& c) {
  ::fusedrnn::emu::WmmaMmaLane<T> me{d.x, a.x, b.x, c.x};
  ::fusedrnn::emu::warp_collective(0xffffffffu, "wmma::mma_sync", 0x6d6d61u, &me, &::fusedrnn::emu::wmma_mma_fn<T>);
}

}  // namespace wmma
}  // namespace nvcuda
