// The persistent strategy's forward: ONE cooperative launch for a whole
// sequence, every cell (LSTM with peepholes or a projection, GRU both reset
// forms, RNN tanh/relu).
//
// Block j owns hidden units [j*U, (j+1)*U) and, for the whole sequence, keeps
// in shared memory the G*U rows of W_hh that produce those units' gates
// (gate-major: row g*U + u is W_hh row g*H + j*U + u), plus the LSTM cell
// state of its units for every batch row.  Per step it
//   1. stages h_prev (float32, from the exchange buffer in global memory) into
//      shared memory (persistent_common.cuh: as hi + lo for tensor cores),
//   2. computes its [rows, G*U] slice of h_prev W_hh^T (BlockProduct),
//   3. applies the gate math (fusedrnn/gate_math.h) to its units, writes the
//      outputs and the workspace, and the new h into the other half of the
//      exchange buffer,
//   4. meets the other blocks at one grid-wide barrier.
// Double buffering makes one barrier per step enough: step p reads half p%2
// and writes half (p+1)%2, which nobody reads before the barrier.
//
// Two cells need every unit's result before their second product, so they
// meet the other blocks once more in the middle of the step, exchanging it
// through `mid_exchange` (written before the mid barrier, read after it, and
// not written again before the step's final barrier):
//   * GRU reset_before: n = tanh(x_n + (r*h) W_hn^T + b_hn).  The first
//     product covers the r and z rows only; the block writes k = r*h of its
//     units, and after the barrier multiplies all of k with its W_hn rows.
//   * LSTM with a projection (h = (o*tanh(c)) W_proj^T, P < H values): the
//     block also keeps U rows of W_proj (outputs [j*U, (j+1)*U) of h, where
//     they exist: P < H <= blocks*U), writes m = o*tanh(c) of its units, and
//     after the barrier multiplies all of m with its W_proj rows.
//
// Packed rows: step p runs its first n_p batch rows.  Rows that start at the
// next step (reverse direction) get their h0 row copied into the buffer the
// next step reads; rows that have finished are simply not read again.
#include <cooperative_groups.h>
#include <fusedrnn/gate_math.h>
#include <stdio.h>

#include "device_common.cuh"
#include "persistent_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

namespace cg = cooperative_groups;
namespace gm = ::fusedrnn::gate_math;
using namespace persistent;

__host__ __device__ constexpr int workspace_blocks_of(PersistentCell c) {
  return gates_of(c) == 4 ? 5 : gates_of(c) == 3 ? 4 : 0;
}

// float32 values a block keeps per (batch row, unit) across the step: the
// LSTM cell state; GRU reset_before's r and z across its mid barrier.
__host__ __device__ constexpr int kept_per_unit(PersistentCell c) {
  return gates_of(c) == 4 ? 1 : c == PersistentCell::gru_reset_before ? 2 : 0;
}

// Shared memory of one block; computed identically by the planner (host) and
// the kernel (device).
struct SmemLayout {
  OperandShape gates;  // the operand of the gate product: h (K = P)
  OperandShape mid;    // the second product's operand: r*h or o*tanh(c) (K = H)
  int64_t cols = 0;    // G*U gate columns
  size_t w = 0, w_proj = 0, a = 0, a_lo = 0, acc = 0, kept = 0, total = 0;  // byte offsets, total size
};

__host__ __device__ inline SmemLayout smem_layout(bool mma, int64_t elem, PersistentCell cell, int64_t units,
                                                  int64_t B, int64_t H, int64_t P) {
  SmemLayout L;
  const bool projection = cell == PersistentCell::lstm_projection;
  const bool two_products = projection || cell == PersistentCell::gru_reset_before;
  L.cols = gates_of(cell) * units;
  L.gates = operand_shape(mma, P, B);
  L.mid = two_products ? operand_shape(mma, H, B) : L.gates;
  // one operand region serves both products: the wider of the two
  const OperandShape& wide = L.mid.ld > L.gates.ld ? L.mid : L.gates;
  const int64_t acc_cols = L.cols > units ? L.cols : units;
  SmemCarver carve;
  L.w = carve.take(weight_bytes(L.gates, L.cols, elem));
  L.w_proj = carve.take(projection ? weight_bytes(L.mid, units, elem) : 0);
  L.a = carve.take(operand_bytes(false, wide, elem));
  L.a_lo = carve.take(mma ? operand_bytes(false, wide, elem) : 0);
  L.acc = carve.take(accumulator_floats(mma, wide.rows_pad, acc_cols) * sizeof(float));
  L.kept = carve.take(static_cast<size_t>(kept_per_unit(cell) * B * units) * sizeof(float));
  L.total = carve.total;
  return L;
}

// The block's slice of a weight matrix `w` ([*, K] row-major) as load_slice's
// element: slice row j = source row row_of(j) (zeros where that is < 0), zero
// padding past K.
template <typename T, typename F>
__device__ __forceinline__ auto rows_of(const T* w, int64_t K, const F& row_of) {
  return [=](int64_t j, int64_t k) {
    const int64_t row = row_of(j);
    return (row >= 0 && k < K) ? w[row * K + k] : from_float<T>(0.0f);
  };
}

template <typename T, PersistentCell CELL>
__global__ void __launch_bounds__(kThreads) persistent_forward_kernel(const PersistentForward a) {
  constexpr int G = gates_of(CELL);
  constexpr bool kMma = uses_mma<T>();
  constexpr int64_t U = units_per_block<T>();
  constexpr bool kLstm = G == 4;
  constexpr bool kProjection = CELL == PersistentCell::lstm_projection;
  constexpr bool kResetBefore = CELL == PersistentCell::gru_reset_before;
  cg::grid_group grid = cg::this_grid();
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const int64_t B = a.B, H = a.H, P = a.P, GH = G * H, W = workspace_blocks_of(CELL) * H;
  const SmemLayout L = smem_layout(kMma, sizeof(T), CELL, U, B, H, P);
  T* Ws = reinterpret_cast<T*>(smem + L.w);
  T* Wp = reinterpret_cast<T*>(smem + L.w_proj);
  float* kept = reinterpret_cast<float*>(smem + L.kept);  // [B, U] each: c (LSTM); r, z (GRU reset_before)
  Operand<T> A;
  A.hi = reinterpret_cast<T*>(smem + L.a);
  A.lo = reinterpret_cast<T*>(smem + L.a_lo);
  BlockProduct<T> prod;
  prod.acc = reinterpret_cast<float*>(smem + L.acc);
  prod.acc_ld = L.cols;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  T* out = static_cast<T*>(a.out);
  T* ws = static_cast<T*>(a.ws);

  // The block's weight rows, once; zero rows past H (or P) and zero padding past K.
  load_slice(Ws, L.gates, L.cols, rows_of(static_cast<const T*>(a.w_hh), P, [=](int64_t j) -> int64_t {
               const int64_t g = j / U, unit = u0 + (j - g * U);
               return unit < H ? g * H + unit : -1;
             }));
  if constexpr (kProjection) {
    load_slice(Wp, L.mid, U, rows_of(static_cast<const T*>(a.w_proj), H, [=](int64_t j) -> int64_t {
                 return u0 + j < P ? u0 + j : -1;
               }));
  }
  if constexpr (kLstm) {
    for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
      const int64_t b = idx / U, unit = u0 + (idx - b * U);
      kept[idx] = unit < H ? a.c0[b * H + unit] : 0.0f;
    }
  }

  // Stages rows [0, n) of a float32 [*, K] matrix in global memory into A.
  // __ldcg: read around L1, which is not coherent with the other SMs' writes.
  const auto stage_rows = [&](const float* src, int64_t K, const OperandShape& s, int64_t n) {
    A.ld = s.ld;
    A.stage(kMma ? round_up(n, kTile) : n,
            [&](int64_t b, int64_t k) { return (b < n && k < K) ? __ldcg(src + b * K + k) : 0.0f; });
  };

  for (int64_t p = 0; p < a.steps; ++p) {
    const int64_t n = a.step_rows[p], off = a.step_offset[p];
    const int64_t ws_off = a.keep_workspace ? off : 0;  // inference: every step's rows in one [B, W] buffer
    const int64_t n_next = p + 1 < a.steps ? a.step_rows[p + 1] : 0;
    const float* cur = a.h_exchange + (p & 1) * B * P;
    float* nxt = a.h_exchange + ((p + 1) & 1) * B * P;

    __syncthreads();  // the previous step's readers of A / acc are done
    stage_rows(cur, P, L.gates, n);
    __syncthreads();
    prod.run(A, Ws, L.gates.ld, n, 0, kResetBefore ? 2 * U : L.cols, L.gates.k_pad);
    __syncthreads();

    for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
      const int64_t b = idx / U, u = idx - b * U, unit = u0 + u;
      if (unit >= H) continue;
      const float* xp = a.xp + (off + b) * GH + unit;
      float pre[G];
#pragma unroll
      for (int g = 0; g < G; ++g) pre[g] = xp[g * H] + (kResetBefore && g == 2 ? 0.0f : prod(b, g * U + u));
      T* ws_row = ws + (ws_off + b) * W + unit;
      if constexpr (kLstm) {
        // without peepholes, no p*c terms at all: 0 * inf would be NaN (gate_math.h)
        const float* pp = a.peep;
        const auto r = pp ? gm::lstm_forward<float, true>(pre[0], pre[1], pre[2], pre[3], kept[b * U + u], pp[unit],
                                                          pp[H + unit], pp[2 * H + unit])
                          : gm::lstm_forward<float, false>(pre[0], pre[1], pre[2], pre[3], kept[b * U + u], 0.0f,
                                                           0.0f, 0.0f);
        ws_row[0] = from_float<T>(r.i), ws_row[H] = from_float<T>(r.f), ws_row[2 * H] = from_float<T>(r.g);
        ws_row[3 * H] = from_float<T>(r.o), ws_row[4 * H] = from_float<T>(r.c);
        kept[b * U + u] = r.c;
        if constexpr (kProjection) {
          a.mid_exchange[b * H + unit] = r.m;
        } else {
          out[(off + b) * H + unit] = from_float<T>(r.m);
          nxt[b * H + unit] = r.m;
        }
      } else if constexpr (kResetBefore) {
        // r, z now; n after every unit's k = r*h is known
        const float r = gm::sigmoid(pre[0]), z = gm::sigmoid(pre[1]);
        const float k = r * __ldcg(cur + b * H + unit);
        ws_row[0] = from_float<T>(r), ws_row[H] = from_float<T>(z), ws_row[3 * H] = from_float<T>(k);
        kept[b * U + u] = r, kept[(B + b) * U + u] = z;
        a.mid_exchange[b * H + unit] = k;
      } else if constexpr (G == 3) {
        // pre[2] holds x_n + (W_hn h); the n gate needs them apart: k = W_hn h + b_hn
        const float k = prod(b, 2 * U + u) + (a.b_hn ? a.b_hn[unit] : 0.0f);
        const auto r = gm::gru_forward_reset_after<float>(pre[0], pre[1], xp[2 * H], k, __ldcg(cur + b * H + unit));
        ws_row[0] = from_float<T>(r.r), ws_row[H] = from_float<T>(r.z), ws_row[2 * H] = from_float<T>(r.n);
        ws_row[3 * H] = from_float<T>(k);
        out[(off + b) * H + unit] = from_float<T>(r.h);
        nxt[b * H + unit] = r.h;
      } else {
        const float h = gm::rnn_forward<float>(pre[0], CELL == PersistentCell::rnn_relu);
        out[(off + b) * H + unit] = from_float<T>(h);
        nxt[b * H + unit] = h;
      }
    }

    if constexpr (kResetBefore || kProjection) {
      grid.sync();  // every unit's k = r*h (or m = o*tanh(c)) is in mid_exchange
      stage_rows(a.mid_exchange, H, L.mid, n);
      __syncthreads();
      if constexpr (kResetBefore) {
        prod.run(A, Ws, L.gates.ld, n, 2 * U, 3 * U, L.mid.k_pad);
      } else {
        prod.run(A, Wp, L.mid.ld, n, 0, U, L.mid.k_pad);
      }
      __syncthreads();
      for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
        const int64_t b = idx / U, u = idx - b * U, unit = u0 + u;
        if constexpr (kResetBefore) {
          if (unit >= H) continue;
          const float an = a.xp[(off + b) * GH + 2 * H + unit] + prod(b, 2 * U + u) + (a.b_hn ? a.b_hn[unit] : 0.0f);
          const auto r = gm::gru_forward_reset_before<float>(kept[b * U + u], kept[(B + b) * U + u], an,
                                                             __ldcg(cur + b * H + unit));
          ws[(ws_off + b) * W + 2 * H + unit] = from_float<T>(r.n);
          out[(off + b) * H + unit] = from_float<T>(r.h);
          nxt[b * H + unit] = r.h;
        } else {
          if (unit >= P) continue;  // h has P < H values: the last blocks own fewer, or none
          const float h = prod(b, u);
          out[(off + b) * P + unit] = from_float<T>(h);
          nxt[b * P + unit] = h;
        }
      }
    }
    // rows that start at the next step (reverse direction of packed input) start from h0
    for (int64_t idx = threadIdx.x; idx < (n_next - n) * U; idx += blockDim.x) {
      const int64_t b = n + idx / U, unit = u0 + idx % U;
      if (unit < P) nxt[b * P + unit] = a.h0[b * P + unit];
    }
    grid.sync();
  }
  if constexpr (kLstm) {
    for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
      const int64_t b = idx / U, unit = u0 + (idx - b * U);
      if (unit < H) a.c_n[b * H + unit] = kept[idx];
    }
  }
}

FUSEDRNN_PERSISTENT_KERNELS(ForwardKernels, persistent_forward_kernel);

}  // namespace

namespace persistent {

PersistentPlan finish_plan(PersistentPlan plan, const void* kernel, size_t shared_bytes, int64_t blocks, int units,
                           int device) {
  plan.units = units;
  plan.threads = kThreads;
  plan.blocks = static_cast<int>(blocks);
  plan.shared_bytes = shared_bytes;
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
  if (shared_bytes > static_cast<size_t>(smem_optin)) {
    snprintf(plan.reason, sizeof(plan.reason),
             "the weight slice and states need %zu bytes of shared memory per block, the device allows %d",
             shared_bytes, smem_optin);
    return plan;
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared_bytes);
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

}  // namespace persistent

PersistentPlan plan_persistent_forward(PersistentCell cell, DType dtype, int64_t B, int64_t H, int64_t P,
                                       int device) {
  PersistentPlan plan;
  const auto k = choose_kernel<ForwardKernels, PersistentForward>(cell, dtype);
  if (k.kernel == nullptr || B <= 0 || H <= 0 || P <= 0) {
    snprintf(plan.reason, sizeof(plan.reason), "no persistent kernel for this cell and dtype");
    return plan;
  }
  const SmemLayout L = smem_layout(k.mma, k.elem, cell, k.units, B, H, P);
  return finish_plan(plan, reinterpret_cast<const void*>(k.kernel), L.total, (H + k.units - 1) / k.units,
                     static_cast<int>(k.units), device);
}

cudaError_t persistent_forward(PersistentCell cell, DType dtype, const PersistentPlan& plan,
                               const PersistentForward& a, cudaStream_t stream) {
  return launch_planned<ForwardKernels>(cell, dtype, plan, a, stream);
}

}  // namespace cuda
}  // namespace fusedrnn
