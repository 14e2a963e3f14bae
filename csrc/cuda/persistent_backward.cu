// The persistent strategy's backward: ONE cooperative launch for the whole
// reversed sequence, every cell; fusedrnn.reference.sequence_backward's
// recurrence, with the per-step strategy's pointwise math (gate_math.h).
//
// Block j owns hidden units [j*U, (j+1)*U) and keeps, for the whole
// sequence, the U columns of W_hh for them in shared memory (transposed: slice
// row u, column k is W_hh[k, j*U + u], k over all G*H gate rows), with the
// gradients it carries between steps for its units: dh (and dc for LSTM).
// Per step (in reverse processing order) it
//   A. turns dh (+ the output gradient) into the gate gradients dA of its
//      units (pointwise), written to the dA matrix in global memory, which the
//      weight gradients after the kernel read too;
//   -- one grid barrier: every unit's dA of the step is written --
//   B. computes dh_prev for its units = dA_rows W_hh[:, its units] (+ GRU's
//      direct z*dh term): the block product over K = G*H, staged in chunks of
//      K when a whole row of dA does not fit in shared memory.
// One barrier per step is enough: B reads the dA rows of step p only, which
// no block writes again, and the next step's A writes other rows (each step
// has its own rows of dA) and the block's own carried gradients.
//
// Two cells need a second product before their gate gradients, so their step
// has a barrier more, and a second transposed slice for LSTM with a projection:
//   * GRU reset_before: dr needs dk = da_n W_hn (all units' da_n) first;
//   * LSTM with a projection (h = m W_proj^T, P values): the gate math needs
//     dm = (dout + dh) W_proj, all P of them; the block owns outputs
//     [j*U, (j+1)*U) of h (where they exist), carries their dh, and writes
//     dout + dh into dH (the projection's gradient needs it after the kernel).
//
// Packed rows: step p runs its first n_p rows; rows past n_p keep their
// carried gradients (their dh is the state's gradient from a later step or
// grad_hn), which is the packed semantics; what a state was before a step
// (h_prev, c_prev) comes from the previous step's rows or h0/c0 (PrevRows).
#include <cooperative_groups.h>
#include <fusedrnn/gate_math.h>
#include <stdio.h>

#include <algorithm>

#include "device_common.cuh"
#include "persistent_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

namespace cg = cooperative_groups;
namespace gm = ::fusedrnn::gate_math;
using namespace persistent;

// The products' K runs over gate blocks (G of H for W_hh, 1 of P for
// W_proj), each padded to a multiple of 16 for tensor cores: a product over
// some gate blocks (GRU reset_before's n block, its r and z blocks) then
// starts on an aligned column of the slice.
__host__ __device__ inline int64_t padded(bool mma, int64_t width) { return mma ? round_up(width, kTile) : width; }

// Shared memory of one block; computed identically by the planner (host) and
// the kernel (device).  `chunk`: the K columns of dA (or dH) staged at once.
struct BackwardLayout {
  OperandShape w;       // the W_hh^T slice: K = G padded blocks of H
  OperandShape w_proj;  // the W_proj^T slice (projection only): K = P padded
  OperandShape a;       // one staged chunk of the operand
  size_t w_off = 0, w_proj_off = 0, a_hi = 0, a_lo = 0, acc = 0, dh = 0, dc = 0, direct = 0, total = 0;
};

__host__ __device__ inline BackwardLayout backward_layout(bool mma, int64_t elem, PersistentCell cell, int64_t units,
                                                          int64_t B, int64_t H, int64_t P, int64_t chunk) {
  BackwardLayout L;
  const int G = gates_of(cell);
  const bool projection = cell == PersistentCell::lstm_projection;
  L.w = operand_shape(mma, G * padded(mma, H), B);
  L.w_proj = operand_shape(mma, padded(mma, P), B);
  L.a = operand_shape(mma, chunk, B);
  SmemCarver carve;
  L.w_off = carve.take(weight_bytes(L.w, units, elem));
  L.w_proj_off = carve.take(projection ? weight_bytes(L.w_proj, units, elem) : 0);
  L.a_hi = carve.take(operand_bytes(false, L.a, elem));
  L.a_lo = carve.take(mma ? operand_bytes(false, L.a, elem) : 0);
  L.acc = carve.take(accumulator_floats(mma, L.a.rows_pad, units) * sizeof(float));
  const size_t per_row = static_cast<size_t>(B * units) * sizeof(float);
  L.dh = carve.take(per_row);
  L.dc = carve.take(G == 4 ? per_row : 0);
  L.direct = carve.take(G == 3 ? per_row : 0);
  L.total = carve.total;
  return L;
}

// The block's transposed slice of a weight matrix w ([blocks * width, cols]
// row-major) as load_slice's element: slice row j holds column first + j of w,
// its gate blocks `pad` apart (zeros past `cols`, in the padding and past the blocks).
template <typename T>
__device__ __forceinline__ auto columns_of(const T* w, int64_t blocks, int64_t width, int64_t pad, int64_t cols,
                                           int64_t first) {
  return [=](int64_t j, int64_t k) {
    const int64_t g = k / pad, h = k - g * pad;
    return (g < blocks && h < width && first + j < cols) ? w[(g * width + h) * cols + first + j]
                                                         : from_float<T>(0.0f);
  };
}

template <typename T, PersistentCell CELL>
__global__ void __launch_bounds__(kThreads) persistent_backward_kernel(const PersistentBackward a) {
  constexpr int G = gates_of(CELL);
  constexpr bool kMma = uses_mma<T>();
  constexpr int64_t U = units_per_block<T>();
  constexpr bool kLstm = G == 4;
  constexpr bool kGru = G == 3;
  constexpr bool kProjection = CELL == PersistentCell::lstm_projection;
  constexpr bool kResetBefore = CELL == PersistentCell::gru_reset_before;
  cg::grid_group grid = cg::this_grid();
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const int64_t B = a.B, H = a.H, P = a.P, GH = G * H, W = (kLstm ? 5 : kGru ? 4 : 0) * H;
  const BackwardLayout L = backward_layout(kMma, sizeof(T), CELL, U, B, H, P, a.k_chunk);
  T* Wt = reinterpret_cast<T*>(smem + L.w_off);
  T* Wpt = reinterpret_cast<T*>(smem + L.w_proj_off);
  float* dh = reinterpret_cast<float*>(smem + L.dh);          // [B, U]: carried dh of the block's h values
  float* dc = reinterpret_cast<float*>(smem + L.dc);          // [B, U]: carried dc (LSTM)
  float* direct = reinterpret_cast<float*>(smem + L.direct);  // [B, U]: GRU's dh_prev terms outside the product
  Operand<T> A;
  A.hi = reinterpret_cast<T*>(smem + L.a_hi);
  A.lo = reinterpret_cast<T*>(smem + L.a_lo);
  A.ld = L.a.ld;
  BlockProduct<T> prod;
  prod.acc = reinterpret_cast<float*>(smem + L.acc);
  prod.acc_ld = U;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const T* dout = static_cast<const T*>(a.dout);
  const T* out = static_cast<const T*>(a.out);
  const T* ws = static_cast<const T*>(a.ws);
  float* dA = a.dA_x;

  // W_hh is [G*H, P]: the block's h values are columns [u0, u0 + U) of it; W_proj is [P, H]
  const int64_t pad_h = padded(kMma, H), pad_p = padded(kMma, P);
  load_slice(Wt, L.w, U, columns_of(static_cast<const T*>(a.w_hh), G, H, pad_h, P, u0));
  if constexpr (kProjection) {
    load_slice(Wpt, L.w_proj, U, columns_of(static_cast<const T*>(a.w_proj), 1, P, pad_p, H, u0));
  }
  for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
    const int64_t b = idx / U, unit = u0 + (idx - b * U);
    dh[idx] = unit < P ? a.dh_n[b * P + unit] : 0.0f;
    if constexpr (kLstm) dc[idx] = unit < H ? a.dc_n[b * H + unit] : 0.0f;
  }

  // The block product for rows [0, n) of gate blocks [g0, g1) of src (float32
  // [*, src_ld], blocks `width` apart) with the same blocks of the slice Ws
  // (`pad` apart): chunk by chunk of K.  Ends with the result readable (prod(b, u)).
  const auto product = [&](const float* src, int64_t src_ld, int64_t width, int64_t pad, int g0, int g1,
                           const T* Ws, int64_t ldw, int64_t n) {
    const int64_t k_begin = g0 * pad, K = (g1 - g0) * pad;
    for (int64_t kc = 0; kc < K; kc += a.k_chunk) {
      const int64_t chunk = K - kc < a.k_chunk ? K - kc : a.k_chunk;
      __syncthreads();  // the previous chunk's (or product's) readers of A are done
      // __ldcg: read around L1, which is not coherent with the other SMs' writes
      A.stage(kMma ? round_up(n, kTile) : n, [&](int64_t b, int64_t k) {
        const int64_t kk = k_begin + kc + k, g = kk / pad, h = kk - g * pad;
        return (b < n && k < chunk && h < width) ? __ldcg(src + b * src_ld + g * width + h) : 0.0f;
      });
      __syncthreads();
      prod.run(A, Ws + k_begin + kc, ldw, n, 0, U, chunk, kc > 0);
    }
    __syncthreads();
  };

  for (int64_t p = a.steps - 1; p >= 0; --p) {
    const int64_t n = a.step_rows[p], off = a.step_offset[p];
    const int64_t carried = a.step_carried[p], prev = a.step_prev_offset[p];
    // what a state was before this step: the previous step's rows, or the initial state
    const auto h_prev = [&](int64_t b, int64_t unit) {
      return b < carried ? to_float(out[(prev + b) * P + unit]) : a.h0[b * P + unit];
    };
    __syncthreads();  // the previous step's writers of dh are done

    if constexpr (kProjection) {
      // dH = dout + dh for the block's h values; then dm = dH W_proj for its units
      for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
        const int64_t b = idx / U, q = u0 + (idx - b * U);
        if (q < P) a.dH[(off + b) * P + q] = to_float(dout[(off + b) * P + q]) + dh[idx];
      }
      grid.sync();
      product(a.dH + off * P, P, P, pad_p, 0, 1, Wpt, L.w_proj.ld, n);
    }

    // A: the gate gradients of the block's units
    for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
      const int64_t b = idx / U, u = idx - b * U, unit = u0 + u;
      if (unit >= H) continue;
      const T* ws_row = ws + (off + b) * W + unit;
      float* dA_row = dA + (off + b) * GH + unit;
      if constexpr (kLstm) {
        const float dm = kProjection ? prod(b, u) : to_float(dout[(off + b) * H + unit]) + dh[idx];
        const float c_prev = b < carried ? to_float(ws[(prev + b) * W + 4 * H + unit]) : a.c0[b * H + unit];
        const float* pp = a.peep;
        const float gi = to_float(ws_row[0]), gf = to_float(ws_row[H]), gg = to_float(ws_row[2 * H]);
        const float go = to_float(ws_row[3 * H]), c = to_float(ws_row[4 * H]);
        // without peepholes, no p*c terms at all: 0 * inf would be NaN (gate_math.h)
        const auto r = pp ? gm::lstm_backward<float, true>(dm, dc[idx], gi, gf, gg, go, c, c_prev, pp[unit],
                                                           pp[H + unit], pp[2 * H + unit])
                          : gm::lstm_backward<float, false>(dm, dc[idx], gi, gf, gg, go, c, c_prev, 0.0f, 0.0f, 0.0f);
        dA_row[0] = r.da_i, dA_row[H] = r.da_f, dA_row[2 * H] = r.da_g, dA_row[3 * H] = r.da_o;
        dc[idx] = r.dc_prev;
      } else if constexpr (kGru) {
        const float d = to_float(dout[(off + b) * H + unit]) + dh[idx];
        const float r = to_float(ws_row[0]), z = to_float(ws_row[H]), nn = to_float(ws_row[2 * H]);
        const auto g = gm::gru_backward_common<float>(d, z, nn, h_prev(b, unit));
        dA_row[H] = g.da_z, dA_row[2 * H] = g.da_n;
        direct[idx] = g.dh_direct;
        if constexpr (!kResetBefore) {  // the hidden side's n gradient is da_n * r (k = W_hn h + b_hn)
          const float dr = gm::gru_da_r_reset_after<float>(g.da_n, r, to_float(ws_row[3 * H]));
          dA_row[0] = dr;
          float* dA_h_row = a.dA_h + (off + b) * GH + unit;
          dA_h_row[0] = dr, dA_h_row[H] = g.da_z, dA_h_row[2 * H] = g.da_n * r;
        }
      } else {
        const float d = to_float(dout[(off + b) * H + unit]) + dh[idx];
        dA_row[0] = gm::rnn_backward<float>(d, to_float(out[(off + b) * H + unit]), CELL == PersistentCell::rnn_relu);
      }
    }
    grid.sync();  // every unit's dA of the step is written

    if constexpr (kResetBefore) {
      // dk = da_n W_hn, then dr and the k = r*h part of dh_prev; dh_prev's product is over r and z only
      product(dA + off * GH, GH, H, pad_h, 2, 3, Wt, L.w.ld, n);
      for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
        const int64_t b = idx / U, u = idx - b * U, unit = u0 + u;
        if (unit >= H) continue;
        const float dk = prod(b, u), r = to_float(ws[(off + b) * W + unit]);
        dA[(off + b) * GH + unit] = gm::gru_da_r_reset_before<float>(dk, r, h_prev(b, unit));
        direct[idx] += dk * r;
      }
      grid.sync();  // every unit's dr is written
    }
    // B: dh_prev of the block's h values
    const float* dA_h = kGru && !kResetBefore ? a.dA_h : dA;
    product(dA_h + off * GH, GH, H, pad_h, 0, kResetBefore ? 2 : G, Wt, L.w.ld, n);
    for (int64_t idx = threadIdx.x; idx < n * U; idx += blockDim.x) {
      const int64_t b = idx / U, u = idx - b * U;
      if (u0 + u < P) dh[idx] = prod(b, u) + (kGru ? direct[idx] : 0.0f);
    }
  }
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < B * U; idx += blockDim.x) {
    const int64_t b = idx / U, unit = u0 + (idx - b * U);
    if (unit < P) a.dh0[b * P + unit] = dh[idx];
    if (kLstm && unit < H) a.dc0[b * H + unit] = dc[idx];
  }
}

FUSEDRNN_PERSISTENT_KERNELS(BackwardKernels, persistent_backward_kernel);

}  // namespace

PersistentPlan plan_persistent_backward(PersistentCell cell, DType dtype, int64_t B, int64_t H, int64_t P,
                                        int device) {
  PersistentPlan plan;
  const auto k = choose_kernel<BackwardKernels, PersistentBackward>(cell, dtype);
  if (k.kernel == nullptr || B <= 0 || H <= 0 || P <= 0) {
    snprintf(plan.reason, sizeof(plan.reason), "no persistent backward kernel for this cell and dtype");
    return plan;
  }
  int smem_optin = 0;
  if (cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    snprintf(plan.reason, sizeof(plan.reason), "device query failed");
    return plan;
  }
  // The widest chunk of K (a multiple of 16) whose block fits: the whole K where it can.
  const int64_t K = std::max(gates_of(cell) * padded(k.mma, H), padded(k.mma, P));
  int64_t chunk = round_up(K, kTile);
  const auto layout = [&](int64_t c) { return backward_layout(k.mma, k.elem, cell, k.units, B, H, P, c); };
  while (chunk > kTile && layout(chunk).total > static_cast<size_t>(smem_optin)) chunk = round_up(chunk / 2, kTile);
  plan.k_chunk = chunk;
  return finish_plan(plan, reinterpret_cast<const void*>(k.kernel), layout(chunk).total, (H + k.units - 1) / k.units,
                     static_cast<int>(k.units), device);
}

cudaError_t persistent_backward(PersistentCell cell, DType dtype, const PersistentPlan& plan,
                                const PersistentBackward& a, cudaStream_t stream) {
  return launch_planned<BackwardKernels>(cell, dtype, plan, a, stream);
}

}  // namespace cuda
}  // namespace fusedrnn
