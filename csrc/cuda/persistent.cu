// The persistent strategy's forward: ONE cooperative launch for a whole
// sequence (LSTM without projection, peephole or not; GRU reset_after; RNN).
//
// Block j owns hidden units [j*U, (j+1)*U) and, for the whole sequence, keeps
// in shared memory the G*U rows of W_hh that produce those units' gates
// (gate-major: row g*U + u is W_hh row g*H + j*U + u), plus the LSTM cell
// state of its units for every batch row.  Per step it
//   1. stages h_prev (float32, from the exchange buffer in global memory) into
//      shared memory: as it is for float32; for float16/bfloat16 as a pair of
//      16-bit values hi + lo (hi = h rounded, lo = h - hi rounded), so that the
//      tensor cores see h to ~16 bits of mantissa instead of 8 (bfloat16),
//   2. computes its [rows, G*U] slice of h_prev W_hh^T: tensor cores (WMMA
//      m16n16k16, float32 accumulation, hi W + lo W) for float16/bfloat16,
//      float32 FMA for float32 (exact, where TF32 would cost accuracy the
//      float32 tests check).  Why the pair: with h rounded to 16 bits the
//      product is that of a different h, and a pre-activation near a ReLU kink
//      or a saturating gate lands where the reference (float32 h, as torch.nn
//      on the CPU and this project's per-step strategy) does not put it,
//   3. applies the gate math (fusedrnn/gate_math.h) to its units, writes the
//      outputs and the workspace, and the new h into the other half of the
//      exchange buffer,
//   4. meets the other blocks at one grid-wide barrier.
// Double buffering makes one barrier per step enough: step p reads half p%2
// and writes half (p+1)%2, which nobody reads before the barrier.
//
// Packed rows: step p runs its first n_p batch rows.  Rows that start at the
// next step (reverse direction) get their h0 row copied into the buffer the
// next step reads; rows that have finished are simply not read again.
#include <cooperative_groups.h>
#include <fusedrnn/gate_math.h>
#include <mma.h>
#include <stdio.h>

#include <type_traits>

#include "device_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

namespace cg = cooperative_groups;
namespace gm = ::fusedrnn::gate_math;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;  // WMMA m = n = k

__host__ __device__ constexpr int gates_of(PersistentCell c) {
  return c == PersistentCell::lstm ? 4 : c == PersistentCell::gru_reset_after ? 3 : 1;
}

__host__ __device__ constexpr int workspace_blocks_of(PersistentCell c) {
  return c == PersistentCell::lstm ? 5 : c == PersistentCell::gru_reset_after ? 4 : 0;
}

__host__ __device__ inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Shared memory of one block; computed identically by the planner (host) and
// the kernel (device).  Regions are 128-byte aligned (WMMA wants 32).
struct SmemLayout {
  int64_t ldk = 0;        // leading dimension of the W and h tiles, in elements
  int64_t k_pad = 0;      // K padded for the product (multiple of 16 for WMMA)
  int64_t rows_pad = 0;   // batch rows the h tile holds
  int64_t cols = 0;       // G*U product columns
  size_t w = 0, h = 0, h_lo = 0, acc = 0, c = 0, total = 0;  // byte offsets, total size
};

__host__ __device__ inline SmemLayout smem_layout(bool mma, int64_t elem, int G, int64_t units, int64_t B,
                                                  int64_t H, bool cell_state) {
  SmemLayout L;
  L.cols = G * units;
  if (mma) {
    L.k_pad = round_up(H, kTile);
    L.ldk = L.k_pad + 8;  // 16-byte skew: fewer bank conflicts, rows stay 32-byte aligned every 16 rows
    L.rows_pad = round_up(B, kTile);
  } else {
    L.k_pad = H;
    L.ldk = H + 1;        // odd stride: the threads of a warp read different banks of W
    L.rows_pad = B;
  }
  // WMMA: (K-slice, tile) sheets of 16x16, at most max(kWarps, tiles) of them (see product_mma)
  const int64_t acc_floats = mma ? (kWarps * kTile * kTile > L.rows_pad * L.cols ? kWarps * kTile * kTile
                                                                                   : L.rows_pad * L.cols)
                                 : L.rows_pad * L.cols;
  size_t off = 0;
  L.w = off;
  off = round_up(off + L.cols * L.ldk * elem, 128);
  L.h = off;
  off = round_up(off + L.rows_pad * L.ldk * elem, 128);
  L.h_lo = off;  // the low halves of h (mma only)
  off = round_up(off + (mma ? L.rows_pad * L.ldk * elem : 0), 128);
  L.acc = off;
  off = round_up(off + acc_floats * sizeof(float), 128);
  L.c = off;
  off = round_up(off + (cell_state ? B * units * sizeof(float) : 0), 128);
  L.total = off;
  return L;
}

template <typename T>
__host__ __device__ constexpr bool uses_mma() {
  return !std::is_same<T, float>::value;
}

template <typename T>
__host__ __device__ constexpr int64_t units_per_block() {
  return uses_mma<T>() ? kTile : 8;  // WMMA: one 16-column tile per gate; FMA: more, smaller blocks
}

// The block's product for rows [0, rows) on tensor cores: (Hs + Hlo) Ws^T,
// the high and low halves of h into one float32 accumulator.  The warps split
// the (row tile, column tile) pairs, and the K dimension too when there are
// fewer pairs than warps.  Every (K-slice, tile) pair is stored as its own
// 16x16 sheet; sum_acc adds the slices of an element.
struct MmaSheets {
  int col_tiles = 1, tiles = 1, slices = 1;
};

template <typename T>
__device__ __forceinline__ MmaSheets product_mma(const T* Hs, const T* Hlo, const T* Ws, float* acc,
                                                 const SmemLayout& L, int64_t rows) {
  using namespace nvcuda;
  MmaSheets s;
  const int warp = threadIdx.x / 32;
  s.col_tiles = static_cast<int>(L.cols / kTile);
  s.tiles = static_cast<int>(round_up(rows, kTile) / kTile) * s.col_tiles;
  s.slices = s.tiles >= kWarps ? 1 : kWarps / s.tiles;
  const int k_tiles = static_cast<int>(L.k_pad / kTile);
  for (int job = warp; job < s.tiles * s.slices; job += kWarps) {
    const int tile = job % s.tiles, slice = job / s.tiles;
    const int mt = tile / s.col_tiles, nt = tile % s.col_tiles;
    const int k0 = slice * k_tiles / s.slices, k1 = (slice + 1) * k_tiles / s.slices;
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> c;
    wmma::fill_fragment(c, 0.0f);
    for (int kt = k0; kt < k1; ++kt) {
      wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::col_major> b;
      const int64_t a_offset = mt * kTile * L.ldk + kt * kTile;
      wmma::load_matrix_sync(b, Ws + nt * kTile * L.ldk + kt * kTile, static_cast<unsigned>(L.ldk));
      wmma::load_matrix_sync(a, Hs + a_offset, static_cast<unsigned>(L.ldk));
      wmma::mma_sync(c, a, b, c);
      wmma::load_matrix_sync(a, Hlo + a_offset, static_cast<unsigned>(L.ldk));
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(acc + static_cast<int64_t>(job) * kTile * kTile, c, kTile, wmma::mem_row_major);
  }
  return s;
}

// What h = v lacks after rounding to hi (rounded again by the caller).  0 where
// hi is not finite: inf - inf would turn an overflowing h into NaN, where the
// hi product alone keeps its inf as the float32 product would.
__device__ __forceinline__ float low_half(float v, float hi) { return isfinite(hi) ? v - hi : 0.0f; }

// Element (b, j) of the product after product_mma.
__device__ __forceinline__ float sum_acc(const float* acc, const MmaSheets& s, int64_t b, int64_t j) {
  const int64_t tile = (b / kTile) * s.col_tiles + j / kTile;
  const int64_t inner = (b % kTile) * kTile + j % kTile;
  float sum = 0.0f;
  for (int i = 0; i < s.slices; ++i) sum += acc[(i * s.tiles + tile) * kTile * kTile + inner];
  return sum;
}

// Element (b, j) of the product after product_fma.
__device__ __forceinline__ float sum_acc(const float* acc, const SmemLayout& L, int64_t b, int64_t j) {
  return acc[b * L.cols + j];
}

// The same product in float32 FMA (float32 storage).
__device__ __forceinline__ void product_fma(const float* Hs, const float* Ws, float* acc, const SmemLayout& L,
                                            int64_t rows, int64_t K) {
  for (int64_t idx = threadIdx.x; idx < rows * L.cols; idx += blockDim.x) {
    const int64_t b = idx / L.cols, j = idx - b * L.cols;
    const float* h = Hs + b * L.ldk;
    const float* w = Ws + j * L.ldk;
    float s = 0.0f;
    for (int64_t k = 0; k < K; ++k) s = fmaf(h[k], w[k], s);
    acc[idx] = s;
  }
}

template <typename T, PersistentCell CELL>
__global__ void __launch_bounds__(kThreads) persistent_forward_kernel(const PersistentForward a) {
  constexpr int G = gates_of(CELL);
  constexpr bool kMma = uses_mma<T>();
  constexpr int64_t U = units_per_block<T>();
  constexpr bool kLstm = CELL == PersistentCell::lstm;
  cg::grid_group grid = cg::this_grid();
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const int64_t B = a.B, H = a.H, GH = G * H, W = workspace_blocks_of(CELL) * H;
  const SmemLayout L = smem_layout(kMma, sizeof(T), G, U, B, H, kLstm);
  T* Ws = reinterpret_cast<T*>(smem + L.w);
  T* Hs = reinterpret_cast<T*>(smem + L.h);
  T* Hlo = reinterpret_cast<T*>(smem + L.h_lo);
  float* acc = reinterpret_cast<float*>(smem + L.acc);
  float* Cs = reinterpret_cast<float*>(smem + L.c);
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const T* w_hh = static_cast<const T*>(a.w_hh);
  T* out = static_cast<T*>(a.out);
  T* ws = static_cast<T*>(a.ws);

  // The block's W_hh rows, once; zero padding past H (units and K).
  for (int64_t idx = threadIdx.x; idx < L.cols * L.ldk; idx += blockDim.x) {
    const int64_t j = idx / L.ldk, k = idx - j * L.ldk;
    const int64_t g = j / U, unit = u0 + (j - g * U);
    Ws[idx] = (unit < H && k < H) ? w_hh[(g * H + unit) * H + k] : from_float<T>(0.0f);
  }
  if (kLstm) {
    for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
      const int64_t b = idx / U, unit = u0 + (idx - b * U);
      Cs[idx] = unit < H ? a.c0[b * H + unit] : 0.0f;
    }
  }

  for (int64_t p = 0; p < a.steps; ++p) {
    const int64_t n = a.step_rows[p], off = a.step_offset[p];
    const int64_t n_next = p + 1 < a.steps ? a.step_rows[p + 1] : 0;
    const float* cur = a.h_exchange + (p & 1) * B * H;
    float* nxt = a.h_exchange + ((p + 1) & 1) * B * H;
    const int64_t rows = kMma ? round_up(n, kTile) : n;

    __syncthreads();  // the previous step's readers of Hs / acc are done
    // __ldcg: read around L1, which is not coherent with the other SMs' writes
    for (int64_t idx = threadIdx.x; idx < rows * L.ldk; idx += blockDim.x) {
      const int64_t b = idx / L.ldk, k = idx - b * L.ldk;
      const float v = (b < n && k < H) ? __ldcg(cur + b * H + k) : 0.0f;
      const T hi = from_float<T>(v);
      Hs[idx] = hi;
      if constexpr (kMma) Hlo[idx] = from_float<T>(low_half(v, to_float(hi)));
    }
    __syncthreads();
    MmaSheets sheets;
    if constexpr (kMma) {
      sheets = product_mma<T>(Hs, Hlo, Ws, acc, L, n);
    } else {
      product_fma(Hs, Ws, acc, L, n, H);
    }
    __syncthreads();
    // element (b, j) of this step's product h_prev W_slice^T
    const auto product = [&](int64_t b, int64_t j) {
      if constexpr (kMma) {
        return sum_acc(acc, sheets, b, j);
      } else {
        return sum_acc(acc, L, b, j);
      }
    };

    for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
      const int64_t b = idx / U, u = idx - b * U, unit = u0 + u;
      if (unit >= H) continue;
      const float* xp = a.xp + (off + b) * GH + unit;
      float pre[G];
#pragma unroll
      for (int g = 0; g < G; ++g) pre[g] = xp[g * H] + product(b, g * U + u);
      T* ws_row = ws + (off + b) * W + unit;
      float h;
      if constexpr (CELL == PersistentCell::lstm) {
        // without peepholes, no p*c terms at all: 0 * inf would be NaN (gate_math.h)
        const float* pp = a.peep;
        const auto r = pp ? gm::lstm_forward<float, true>(pre[0], pre[1], pre[2], pre[3], Cs[b * U + u], pp[unit],
                                                          pp[H + unit], pp[2 * H + unit])
                          : gm::lstm_forward<float, false>(pre[0], pre[1], pre[2], pre[3], Cs[b * U + u], 0.0f, 0.0f,
                                                           0.0f);
        ws_row[0] = from_float<T>(r.i), ws_row[H] = from_float<T>(r.f), ws_row[2 * H] = from_float<T>(r.g);
        ws_row[3 * H] = from_float<T>(r.o), ws_row[4 * H] = from_float<T>(r.c);
        Cs[b * U + u] = r.c;
        h = r.m;
      } else if constexpr (CELL == PersistentCell::gru_reset_after) {
        // pre[2] holds x_n + (W_hn h); the n gate needs them apart: k = W_hn h + b_hn
        const float k = product(b, 2 * U + u) + (a.b_hn ? a.b_hn[unit] : 0.0f);
        const auto r = gm::gru_forward_reset_after<float>(pre[0], pre[1], xp[2 * H], k, __ldcg(cur + b * H + unit));
        ws_row[0] = from_float<T>(r.r), ws_row[H] = from_float<T>(r.z), ws_row[2 * H] = from_float<T>(r.n);
        ws_row[3 * H] = from_float<T>(k);
        h = r.h;
      } else {
        h = gm::rnn_forward<float>(pre[0], CELL == PersistentCell::rnn_relu);
      }
      out[(off + b) * H + unit] = from_float<T>(h);
      nxt[b * H + unit] = h;
    }
    // rows that start at the next step (reverse direction of packed input) start from h0
    for (int64_t idx = threadIdx.x; idx < (n_next - n) * U; idx += blockDim.x) {
      const int64_t b = n + idx / U, unit = u0 + idx % U;
      if (unit < H) nxt[b * H + unit] = a.h0[b * H + unit];
    }
    grid.sync();
  }
  if (kLstm) {
    for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
      const int64_t b = idx / U, unit = u0 + (idx - b * U);
      if (unit < H) a.c_n[b * H + unit] = Cs[idx];
    }
  }
}

using KernelPtr = void (*)(PersistentForward);

struct KernelChoice {
  KernelPtr kernel = nullptr;
  const char* name = nullptr;
  bool mma = false;
  size_t elem = 0;
  int64_t units = 0;
};

template <typename T>
void kernel_for(PersistentCell cell, KernelChoice& k) {
  switch (cell) {
    case PersistentCell::lstm:
      k.kernel = &persistent_forward_kernel<T, PersistentCell::lstm>;
      k.name = "persistent_forward_kernel<lstm>";
      return;
    case PersistentCell::gru_reset_after:
      k.kernel = &persistent_forward_kernel<T, PersistentCell::gru_reset_after>;
      k.name = "persistent_forward_kernel<gru_reset_after>";
      return;
    case PersistentCell::rnn_tanh:
      k.kernel = &persistent_forward_kernel<T, PersistentCell::rnn_tanh>;
      k.name = "persistent_forward_kernel<rnn_tanh>";
      return;
    case PersistentCell::rnn_relu:
      k.kernel = &persistent_forward_kernel<T, PersistentCell::rnn_relu>;
      k.name = "persistent_forward_kernel<rnn_relu>";
      return;
  }
}

KernelChoice choose_kernel(PersistentCell cell, DType dtype) {
  KernelChoice k;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    kernel_for<T>(cell, k);
    k.mma = uses_mma<T>();
    k.elem = sizeof(T);
    k.units = units_per_block<T>();
    return cudaSuccess;
  });
  return k;
}

}  // namespace

PersistentPlan plan_persistent_forward(PersistentCell cell, DType dtype, int64_t B, int64_t H, int device) {
  PersistentPlan plan;
  const KernelChoice k = choose_kernel(cell, dtype);
  if (k.kernel == nullptr || B <= 0 || H <= 0) {
    snprintf(plan.reason, sizeof(plan.reason), "no persistent kernel for this cell and dtype");
    return plan;
  }
  const SmemLayout L = smem_layout(k.mma, static_cast<int64_t>(k.elem), gates_of(cell), k.units, B, H,
                                   cell == PersistentCell::lstm);
  plan.units = static_cast<int>(k.units);
  plan.threads = kThreads;
  plan.blocks = static_cast<int>((H + k.units - 1) / k.units);
  plan.shared_bytes = L.total;
  int cooperative = 0, smem_optin = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) {
    snprintf(plan.reason, sizeof(plan.reason), "device query failed: %s", cudaGetErrorString(err));
    return plan;
  }
  if (!cooperative) {
    snprintf(plan.reason, sizeof(plan.reason), "the device does not support cooperative launches");
    return plan;
  }
  if (L.total > static_cast<size_t>(smem_optin)) {
    snprintf(plan.reason, sizeof(plan.reason),
             "the weight slice and states need %zu bytes of shared memory per block, the device allows %d",
             L.total, smem_optin);
    return plan;
  }
  err = cudaFuncSetAttribute(reinterpret_cast<const void*>(k.kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(L.total));
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k.kernel, kThreads, L.total);
  if (err != cudaSuccess) {
    snprintf(plan.reason, sizeof(plan.reason), "occupancy query failed: %s", cudaGetErrorString(err));
    return plan;
  }
  if (plan.blocks > per_sm * sms) {
    snprintf(plan.reason, sizeof(plan.reason),
             "the cooperative grid of %d blocks does not fit on the device (%d per SM x %d SMs)", plan.blocks,
             per_sm, sms);
    return plan;
  }
  plan.ok = true;
  return plan;
}

cudaError_t persistent_forward(PersistentCell cell, DType dtype, const PersistentPlan& plan,
                               const PersistentForward& a, cudaStream_t stream) {
  if (!plan.ok) return cudaErrorInvalidConfiguration;
  if (a.steps == 0) return cudaSuccess;
  const KernelChoice k = choose_kernel(cell, dtype);
  return launch_cooperative(k.name, k.kernel, dim3(plan.blocks), dim3(plan.threads), plan.shared_bytes, stream, a);
}

}  // namespace cuda
}  // namespace fusedrnn
