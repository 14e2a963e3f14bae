// What the persistent kernels (persistent.cu: forward; persistent_backward.cu)
// share: the block geometry, the carving of a block's shared memory, and the
// block product  acc = A W^T  of a staged operand A (batch rows of a float32
// matrix: h, r*h, o*tanh(c), gate gradients) with the block's weight slice W,
// which stays in shared memory for the whole sequence.
//
// The product runs on tensor cores (WMMA m16n16k16, float32 accumulation) for
// float16/bfloat16 weights and in float32 FMA for float32 weights (exact where
// TF32 would cost the accuracy the float32 tests check).  Tensor cores take
// 16-bit operands only, so A is staged as a pair hi + lo (hi = A rounded to the
// dtype, lo = the rest, rounded) and the product is hi W + lo W: A keeps ~16
// bits of mantissa instead of 8 (bfloat16).  With A rounded once, the
// emulation found a bfloat16 ReLU pre-activation within a rounding of 0
// landing on the other side of the kink than in the reference (float32 A, as
// torch.nn on the CPU and the per-step strategy), and a gradient through it
// far off (csrc/cuda/README.md, Numerics).
#pragma once

#include <mma.h>

#include <type_traits>

#include "device_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace persistent {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA m = n = k

__host__ __device__ inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename T>
__host__ __device__ constexpr bool uses_mma() {
  return !std::is_same<T, float>::value;
}

// Hidden units (and weight rows per gate) a block owns: one 16-column WMMA
// tile per gate; with FMA, more and smaller blocks.
template <typename T>
__host__ __device__ constexpr int64_t units_per_block() {
  return uses_mma<T>() ? kTile : 8;
}

// Byte offsets of a block's shared-memory regions, computed identically by a
// planner (host) and its kernel (device).  Regions are 128-byte aligned (WMMA
// wants 32).
struct SmemCarver {
  size_t total = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t at = total;
    total = static_cast<size_t>(round_up(static_cast<int64_t>(total + bytes), 128));
    return at;
  }
};

// The shape of a staged operand for a product over K: rows_pad x ld elements
// (and the same again for the low halves with tensor cores).  The weight slice
// of that product has the same leading dimension.
struct OperandShape {
  int64_t k_pad = 0;     // K padded for the product (a multiple of 16 for WMMA)
  int64_t ld = 0;        // leading dimension of the operand and the weight slice, in elements
  int64_t rows_pad = 0;  // batch rows the operand holds
};

__host__ __device__ inline OperandShape operand_shape(bool mma, int64_t K, int64_t rows) {
  OperandShape s;
  if (mma) {
    s.k_pad = round_up(K, kTile);
    s.ld = s.k_pad + 8;  // 16-byte skew: fewer bank conflicts, rows stay 32-byte aligned every 16 rows
    s.rows_pad = round_up(rows, kTile);
  } else {
    s.k_pad = K;
    s.ld = K + 1;        // odd stride: the threads of a warp read different banks of W
    s.rows_pad = rows;
  }
  return s;
}

// Bytes of an operand (hi and lo halves with tensor cores) and of a weight slice of `cols` columns.
__host__ __device__ inline size_t operand_bytes(bool mma, const OperandShape& s, int64_t elem) {
  return static_cast<size_t>(s.rows_pad * s.ld * elem * (mma ? 2 : 1));
}
__host__ __device__ inline size_t weight_bytes(const OperandShape& s, int64_t cols, int64_t elem) {
  return static_cast<size_t>(cols * s.ld * elem);
}

// Floats of the product's accumulator for rows_pad x cols: WMMA stores one
// 16x16 sheet per (K-slice, tile) job, at most max(kWarps, tiles) of them (see
// BlockProduct::run_mma).
__host__ __device__ inline int64_t accumulator_floats(bool mma, int64_t rows_pad, int64_t cols) {
  const int64_t tiles = rows_pad * cols;
  return mma && kWarps * kTile * kTile > tiles ? kWarps * kTile * kTile : tiles;
}

// What A = v lacks after rounding to hi (rounded again by the caller).  0 where
// hi is not finite: inf - inf would turn an overflowing value into NaN, where
// the hi product alone keeps its inf as the float32 product would.
__device__ __forceinline__ float low_half(float v, float hi) { return isfinite(hi) ? v - hi : 0.0f; }

// A staged operand in shared memory: element (b, k) at hi[b * ld + k] (and lo, tensor cores only).
template <typename T>
struct Operand {
  T* hi = nullptr;
  T* lo = nullptr;
  int64_t ld = 0;

  // Stages rows [0, rows_pad) x [0, ld) from value(b, k) (a float32, 0 outside
  // the real rows and K): every element, padding included, so the product
  // never reads stale shared memory.  The caller synchronises before and after.
  template <typename F>
  __device__ __forceinline__ void stage(int64_t rows_pad, const F& value) {
    for (int64_t idx = threadIdx.x; idx < rows_pad * ld; idx += blockDim.x) {
      const int64_t b = idx / ld, k = idx - b * ld;
      const float v = value(b, k);
      const T h = from_float<T>(v);
      hi[idx] = h;
      if constexpr (uses_mma<T>()) lo[idx] = from_float<T>(low_half(v, to_float(h)));
    }
  }
};

// The block product acc = A W^T for batch rows [0, rows) and the weight
// columns [c0, c1) (a column j of the product is row j of the weight slice;
// with tensor cores c0 and c1 are multiples of 16).  Read an element with
// operator() after a __syncthreads().
template <typename T>
struct BlockProduct {
  float* acc = nullptr;
  int64_t acc_ld = 0;              // FMA: acc[b * acc_ld + j]
  int col0 = 0, col_tiles = 1, tiles = 1, slices = 1;  // WMMA sheets

  __device__ __forceinline__ void run(const Operand<T>& A, const T* Ws, int64_t rows, int64_t c0, int64_t c1,
                                      int64_t k_pad) {
    if constexpr (uses_mma<T>()) {
      run_mma(A, Ws, rows, c0, c1, k_pad);
    } else {
      run_fma(A, Ws, rows, c0, c1, k_pad);
    }
  }

  // element (b, j) of the product, j a column in [c0, c1)
  __device__ __forceinline__ float operator()(int64_t b, int64_t j) const {
    if constexpr (uses_mma<T>()) {
      const int64_t tile = (b / kTile) * col_tiles + (j / kTile - col0);
      const int64_t inner = (b % kTile) * kTile + j % kTile;
      float sum = 0.0f;
      for (int i = 0; i < slices; ++i) sum += acc[(i * tiles + tile) * kTile * kTile + inner];
      return sum;
    } else {
      return acc[b * acc_ld + j];
    }
  }

 private:
  // The warps split the (row tile, column tile) pairs, and the K dimension too
  // when there are fewer pairs than warps.  Every (K-slice, tile) pair is
  // stored as its own 16x16 sheet; operator() adds the slices of an element.
  __device__ __forceinline__ void run_mma(const Operand<T>& A, const T* Ws, int64_t rows, int64_t c0, int64_t c1,
                                          int64_t k_pad) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
    const unsigned ld = static_cast<unsigned>(A.ld);
    col0 = static_cast<int>(c0 / kTile);
    col_tiles = static_cast<int>((c1 - c0) / kTile);
    tiles = static_cast<int>(round_up(rows, kTile) / kTile) * col_tiles;
    slices = tiles >= kWarps ? 1 : kWarps / tiles;
    const int k_tiles = static_cast<int>(k_pad / kTile);
    for (int job = warp; job < tiles * slices; job += kWarps) {
      const int tile = job % tiles, slice = job / tiles;
      const int mt = tile / col_tiles, nt = col0 + tile % col_tiles;
      const int k0 = slice * k_tiles / slices, k1 = (slice + 1) * k_tiles / slices;
      wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> c;
      wmma::fill_fragment(c, 0.0f);
      for (int kt = k0; kt < k1; ++kt) {
        wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::col_major> b;
        const int64_t a_offset = mt * kTile * A.ld + kt * kTile;
        wmma::load_matrix_sync(b, Ws + nt * kTile * A.ld + kt * kTile, ld);
        wmma::load_matrix_sync(a, A.hi + a_offset, ld);
        wmma::mma_sync(c, a, b, c);
        wmma::load_matrix_sync(a, A.lo + a_offset, ld);
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(acc + static_cast<int64_t>(job) * kTile * kTile, c, kTile, wmma::mem_row_major);
    }
  }

  __device__ __forceinline__ void run_fma(const Operand<T>& A, const T* Ws, int64_t rows, int64_t c0, int64_t c1,
                                          int64_t K) {
    const int64_t cols = c1 - c0;
    for (int64_t idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
      const int64_t b = idx / cols, j = c0 + (idx - b * cols);
      const T* a = A.hi + b * A.ld;
      const T* w = Ws + j * A.ld;
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s = fmaf(to_float(a[k]), to_float(w[k]), s);
      acc[b * acc_ld + j] = s;
    }
  }
};

}  // namespace persistent
}  // namespace cuda
}  // namespace fusedrnn
