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

__host__ __device__ constexpr int gates_of(PersistentCell c) {
  return c == PersistentCell::lstm || c == PersistentCell::lstm_projection ? 4
         : c == PersistentCell::gru_reset_after || c == PersistentCell::gru_reset_before ? 3
                                                                                         : 1;
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

// Fills a block's weight slice (cols rows of s.ld elements, padding included):
// element (j, k) = element(j, k), which returns 0 past the real rows and K.
template <typename T, typename F>
__device__ __forceinline__ void load_slice(T* Ws, const OperandShape& s, int64_t cols, const F& element) {
  for (int64_t idx = threadIdx.x; idx < cols * s.ld; idx += blockDim.x) {
    const int64_t j = idx / s.ld, k = idx - j * s.ld;
    Ws[idx] = element(j, k);
  }
}

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
// columns [c0, c1) (a column j of the product is row j of the weight slice Ws,
// whose leading dimension is ldw; with tensor cores c0 and c1 are multiples of
// 16).  `accumulate` adds to the previous run's result instead (same rows and
// columns): a product over a long K runs in chunks of K, A holding one chunk
// and Ws pointing at its first column.  Read an element with operator() after
// a __syncthreads().
template <typename T>
struct BlockProduct {
  float* acc = nullptr;
  int64_t acc_ld = 0;              // FMA: acc[b * acc_ld + j]
  int col0 = 0, col_tiles = 1, tiles = 1, slices = 1;  // WMMA sheets

  __device__ __forceinline__ void run(const Operand<T>& A, const T* Ws, int64_t ldw, int64_t rows, int64_t c0,
                                      int64_t c1, int64_t k_pad, bool accumulate = false) {
    if constexpr (uses_mma<T>()) {
      run_mma(A, Ws, ldw, rows, c0, c1, k_pad, accumulate);
    } else {
      run_fma(A, Ws, ldw, rows, c0, c1, k_pad, accumulate);
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
  __device__ __forceinline__ void run_mma(const Operand<T>& A, const T* Ws, int64_t ldw, int64_t rows, int64_t c0,
                                          int64_t c1, int64_t k_pad, bool accumulate) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
    col0 = static_cast<int>(c0 / kTile);
    col_tiles = static_cast<int>((c1 - c0) / kTile);
    tiles = static_cast<int>(round_up(rows, kTile) / kTile) * col_tiles;
    slices = tiles >= kWarps ? 1 : kWarps / tiles;
    const int k_tiles = static_cast<int>(k_pad / kTile);
    for (int job = warp; job < tiles * slices; job += kWarps) {
      const int tile = job % tiles, slice = job / tiles;
      const int mt = tile / col_tiles, nt = col0 + tile % col_tiles;
      const int k0 = slice * k_tiles / slices, k1 = (slice + 1) * k_tiles / slices;
      float* sheet = acc + static_cast<int64_t>(job) * kTile * kTile;
      wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> c;
      if (accumulate) {
        wmma::load_matrix_sync(c, sheet, kTile, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(c, 0.0f);
      }
      for (int kt = k0; kt < k1; ++kt) {
        wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::col_major> b;
        const int64_t a_offset = mt * kTile * A.ld + kt * kTile;
        wmma::load_matrix_sync(b, Ws + nt * kTile * ldw + kt * kTile, static_cast<unsigned>(ldw));
        wmma::load_matrix_sync(a, A.hi + a_offset, static_cast<unsigned>(A.ld));
        wmma::mma_sync(c, a, b, c);
        wmma::load_matrix_sync(a, A.lo + a_offset, static_cast<unsigned>(A.ld));
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(sheet, c, kTile, wmma::mem_row_major);
    }
  }

  __device__ __forceinline__ void run_fma(const Operand<T>& A, const T* Ws, int64_t ldw, int64_t rows, int64_t c0,
                                          int64_t c1, int64_t K, bool accumulate) {
    const int64_t cols = c1 - c0;
    for (int64_t idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
      const int64_t b = idx / cols, j = c0 + (idx - b * cols);
      const T* a = A.hi + b * A.ld;
      const T* w = Ws + j * ldw;
      float s = accumulate ? acc[b * acc_ld + j] : 0.0f;
      for (int64_t k = 0; k < K; ++k) s = fmaf(to_float(a[k]), to_float(w[k]), s);
      acc[b * acc_ld + j] = s;
    }
  }
};

// ---------------------------------------------------------------------------
// host side: which kernel runs a (cell, dtype), and the plan's device checks
// ---------------------------------------------------------------------------

// The kernel of a (cell, dtype), with what its planner needs.
template <typename Args>
struct KernelChoice {
  void (*kernel)(Args) = nullptr;
  const char* name = nullptr;
  bool mma = false;
  int64_t elem = 0, units = 0;
};

// `Kernels` names a kernel template: `Kernels::get<T, CELL>()` is the kernel,
// `Kernels::names[cell]` its name for errors (in PersistentCell's order);
// FUSEDRNN_PERSISTENT_KERNELS defines such a struct.
#define FUSEDRNN_PERSISTENT_KERNELS(Name, kernel)                                                              \
  struct Name {                                                                                                \
    template <typename T, PersistentCell CELL>                                                                 \
    static constexpr auto get() {                                                                              \
      return &kernel<T, CELL>;                                                                                 \
    }                                                                                                          \
    static constexpr const char* names[] = {#kernel "<lstm>",     #kernel "<gru_reset_after>",                \
                                            #kernel "<rnn_tanh>", #kernel "<rnn_relu>",                       \
                                            #kernel "<gru_reset_before>", #kernel "<lstm_projection>"};       \
  }

template <typename Kernels, typename Args>
KernelChoice<Args> choose_kernel(PersistentCell cell, DType dtype) {
  KernelChoice<Args> k;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (cell) {
      case PersistentCell::lstm: k.kernel = Kernels::template get<T, PersistentCell::lstm>(); break;
      case PersistentCell::gru_reset_after: k.kernel = Kernels::template get<T, PersistentCell::gru_reset_after>(); break;
      case PersistentCell::rnn_tanh: k.kernel = Kernels::template get<T, PersistentCell::rnn_tanh>(); break;
      case PersistentCell::rnn_relu: k.kernel = Kernels::template get<T, PersistentCell::rnn_relu>(); break;
      case PersistentCell::gru_reset_before: k.kernel = Kernels::template get<T, PersistentCell::gru_reset_before>(); break;
      case PersistentCell::lstm_projection: k.kernel = Kernels::template get<T, PersistentCell::lstm_projection>(); break;
    }
    k.name = Kernels::names[static_cast<int>(cell)];
    k.mma = uses_mma<T>();
    k.elem = sizeof(T);
    k.units = units_per_block<T>();
    return cudaSuccess;
  });
  return k;
}

// Launches the kernel of (cell, dtype) with the plan's geometry.
template <typename Kernels, typename Args>
cudaError_t launch_planned(PersistentCell cell, DType dtype, const PersistentPlan& plan, const Args& a,
                           cudaStream_t stream) {
  if (!plan.ok) return cudaErrorInvalidConfiguration;
  if (a.steps == 0) return cudaSuccess;
  const auto k = choose_kernel<Kernels, Args>(cell, dtype);
  return launch_cooperative(k.name, k.kernel, dim3(plan.blocks), dim3(plan.threads), plan.shared_bytes, stream, a);
}

// Completes a plan of `blocks` blocks of kThreads threads with `shared_bytes`
// of dynamic shared memory each: ok when the device supports cooperative
// launches, the shared memory fits its opt-in limit per block, and the whole
// grid is resident at once at the occupancy the runtime reports (else the
// reason).  Sets the kernel's shared-memory attribute.  persistent.cu.
PersistentPlan finish_plan(PersistentPlan plan, const void* kernel, size_t shared_bytes, int64_t blocks, int units,
                           int device);

}  // namespace persistent
}  // namespace cuda
}  // namespace fusedrnn
