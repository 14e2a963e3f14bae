// Device-side helpers shared by the .cu files (never included by the wrapper):
// storage-dtype conversion, vector loads and stores, the dispatch from the
// runtime DType to the kernels' template parameter, and the kernel launches.
//
// The .cu files are one text for nvcc and for the CPU emulation build
// (csrc/emulation/cuda_emulation.h, included in place of the CUDA headers
// there): what differs is confined to the launch helpers and
// FUSEDRNN_DYNAMIC_SHARED below.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launchers.cuh"

namespace fusedrnn {
namespace cuda {

// ---------------------------------------------------------------------------
// storage dtype <-> float32 (all math is float32)
// ---------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------
// V consecutive elements moved as one aligned access (16 bytes for V=4 floats,
// 8 bytes for V=4 16-bit values); the launcher picks V=4 only where every
// pointer and leading dimension allows it, else V=1.
// ---------------------------------------------------------------------------

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ void load(const T* p, float (&dst)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) dst[i] = to_float(pk.v[i]);
}

template <int V, typename T>
__device__ __forceinline__ void store(T* p, const float (&src)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int i = 0; i < V; ++i) pk.v[i] = from_float<T>(src[i]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

// p[b*ld + u .. +V) as float32; zeros when p is null (absent optional input).
template <int V, typename T>
__device__ __forceinline__ void load_or_zero(const T* p, int64_t offset, float (&dst)[V]) {
  if (p) {
    load<V>(p + offset, dst);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) dst[i] = 0.0f;
  }
}

// ---------------------------------------------------------------------------
// host side: dtype dispatch and the vector-width rule
// ---------------------------------------------------------------------------

inline bool aligned(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// Calls fn(T{}) with T the storage type named by dtype.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, const F& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::f16: return fn(__half{});
    case DType::bf16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// ---------------------------------------------------------------------------
// kernel launches: every launch goes through these two.  Under nvcc they are
// <<<>>> and cudaLaunchCooperativeKernel; in the emulation build the emulator
// runs the kernel, which needs the parameter types (cudaLaunchCooperativeKernel's
// void** loses them).  `name` names the kernel in the emulator's errors.
// Both return the launch's error (cudaGetLastError right after it).
// ---------------------------------------------------------------------------

// A non-deduced parameter: the arguments convert to the kernel's parameter types.
template <typename T>
struct KernelParam {
  using type = T;
};

template <typename... Params>
cudaError_t launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
                   cudaStream_t stream, typename KernelParam<Params>::type... args) {
#ifdef FUSEDRNN_CUDA_EMULATION
  (void)stream;
  return ::fusedrnn::emu::launch(name, kernel, grid, block, dynamic_smem, /*cooperative=*/false, args...);
#else
  (void)name;
  kernel<<<grid, block, dynamic_smem, stream>>>(args...);
  return cudaGetLastError();
#endif
}

// Every block resident at once (grid.sync() allowed); the grid must fit on the device.
template <typename... Params>
cudaError_t launch_cooperative(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                               size_t dynamic_smem, cudaStream_t stream, typename KernelParam<Params>::type... args) {
#ifdef FUSEDRNN_CUDA_EMULATION
  (void)stream;
  return ::fusedrnn::emu::launch(name, kernel, grid, block, dynamic_smem, /*cooperative=*/true, args...);
#else
  (void)name;
  void* params[] = {static_cast<void*>(&args)...};
  const cudaError_t err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, params,
                                                      dynamic_smem, stream);
  const cudaError_t last = cudaGetLastError();
  return err != cudaSuccess ? err : last;
#endif
}

// A kernel's dynamic shared memory (`extern __shared__` under nvcc; the
// emulation header defines it as the block's buffer).
#ifndef FUSEDRNN_DYNAMIC_SHARED
#define FUSEDRNN_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

// Threads per block of the pointwise kernels, and their 1-D grid.
constexpr int kPointwiseThreads = 256;

inline unsigned pointwise_blocks(int64_t n, int64_t H, int V) {
  const int64_t work = n * (H / V);
  return static_cast<unsigned>((work + kPointwiseThreads - 1) / kPointwiseThreads);
}

}  // namespace cuda
}  // namespace fusedrnn
