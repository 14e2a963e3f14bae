// The per-step strategy's fused pointwise kernels: everything between two
// recurrent products of one time step, for all G gate blocks of a hidden unit
// at once, forward and backward, for every cell.
//
// One thread owns V consecutive hidden units of one batch row (V=4: 16-byte
// float32 loads; V=1 where sizes or pointers do not allow it).  All math is
// float32 and comes from fusedrnn/gate_math.h, the formulas the CPU kernels
// run.  The storage dtype T (float, __half, __nv_bfloat16) is a template
// parameter: only the outputs, the saved workspace and the gradient of the
// outputs are stored in it; states and gradients flowing between steps stay
// float32, as in fusedrnn.reference.
#include <fusedrnn/gate_math.h>

#include "device_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

namespace gm = ::fusedrnn::gate_math;

// The (row, first unit) this thread owns, or false past the end.
template <int V>
__device__ __forceinline__ bool my_element(int64_t n, int64_t H, int64_t& b, int64_t& u) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_row = H / V;
  if (idx >= n * per_row) return false;
  b = idx / per_row;
  u = (idx - b * per_row) * V;
  return true;
}

// The gradient reaching a step's output rows: dout (storage dtype, may be absent) + dh (float32).
template <int V, typename T>
__device__ __forceinline__ void output_gradient(const T* dout, int64_t dout_ld, const float* dh, int64_t dh_ld,
                                                int64_t b, int64_t u, float (&g)[V]) {
  load<V>(dh + b * dh_ld + u, g);
  if (dout) {
    float d[V];
    load<V>(dout + b * dout_ld + u, d);
#pragma unroll
    for (int i = 0; i < V; ++i) g[i] = d[i] + g[i];
  }
}

// A state from before the step (see PrevRows).
template <int V, typename T>
__device__ __forceinline__ void load_prev(const PrevRows& p, int64_t b, int64_t u, float (&dst)[V]) {
  if (b < p.carried) {
    load<V>(static_cast<const T*>(p.rows) + b * p.rows_ld + u, dst);
  } else {
    load<V>(p.initial + b * p.initial_ld + u, dst);
  }
}

// ===========================================================================
// forward
// ===========================================================================

template <typename T, int V>
__global__ void lstm_forward_kernel(const LstmForwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  const float* xp = a.xp + b * a.xp_ld + u;
  const float* hp = a.hp + b * a.hp_ld + u;
  float ai[V], af[V], ag[V], ao[V], t[V], c[V], pi[V], pf[V], po[V];
  load<V>(xp, ai), load<V>(hp, t);
  for (int i = 0; i < V; ++i) ai[i] += t[i];
  load<V>(xp + H, af), load<V>(hp + H, t);
  for (int i = 0; i < V; ++i) af[i] += t[i];
  load<V>(xp + 2 * H, ag), load<V>(hp + 2 * H, t);
  for (int i = 0; i < V; ++i) ag[i] += t[i];
  load<V>(xp + 3 * H, ao), load<V>(hp + 3 * H, t);
  for (int i = 0; i < V; ++i) ao[i] += t[i];
  load<V>(a.c + b * H + u, c);
  load_or_zero<V>(a.peep, u, pi), load_or_zero<V>(a.peep, H + u, pf), load_or_zero<V>(a.peep, 2 * H + u, po);
  float gi[V], gf[V], gg[V], go[V], m[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    // without peepholes, no p*c terms at all: 0 * inf would be NaN (gate_math.h)
    const auto r = a.peep ? gm::lstm_forward<float, true>(ai[i], af[i], ag[i], ao[i], c[i], pi[i], pf[i], po[i])
                          : gm::lstm_forward<float, false>(ai[i], af[i], ag[i], ao[i], c[i], pi[i], pf[i], po[i]);
    gi[i] = r.i, gf[i] = r.f, gg[i] = r.g, go[i] = r.o, c[i] = r.c, m[i] = r.m;
  }
  T* ws = static_cast<T*>(a.ws) + b * a.ws_ld + u;
  store<V>(ws, gi), store<V>(ws + H, gf), store<V>(ws + 2 * H, gg), store<V>(ws + 3 * H, go), store<V>(ws + 4 * H, c);
  store<V>(a.c + b * H + u, c);
  store<V>(a.m + b * a.m_ld + u, m);
  if (a.out) store<V>(static_cast<T*>(a.out) + b * a.out_ld + u, m);
}

template <typename T, int V>
__global__ void gru_forward_reset_after_kernel(const GruForwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  const float* xp = a.xp + b * a.xp_ld + u;
  const float* hp = a.hp + b * a.hp_ld + u;
  float ar[V], az[V], xn[V], k[V], t[V], bn[V], h[V];
  load<V>(xp, ar), load<V>(hp, t);
  for (int i = 0; i < V; ++i) ar[i] += t[i];
  load<V>(xp + H, az), load<V>(hp + H, t);
  for (int i = 0; i < V; ++i) az[i] += t[i];
  load<V>(xp + 2 * H, xn), load<V>(hp + 2 * H, k), load_or_zero<V>(a.b_hn, u, bn);
  for (int i = 0; i < V; ++i) k[i] += bn[i];
  load<V>(a.h + b * a.h_ld + u, h);
  float r[V], z[V], nn[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const auto o = gm::gru_forward_reset_after<float>(ar[i], az[i], xn[i], k[i], h[i]);
    r[i] = o.r, z[i] = o.z, nn[i] = o.n, h[i] = o.h;
  }
  T* ws = static_cast<T*>(a.ws) + b * a.ws_ld + u;
  store<V>(ws, r), store<V>(ws + H, z), store<V>(ws + 2 * H, nn), store<V>(ws + 3 * H, k);
  store<V>(a.h + b * a.h_ld + u, h);
  store<V>(static_cast<T*>(a.out) + b * a.out_ld + u, h);
}

// reset_before, phase 1: r, z and k = r*h (the operand of the n-gate product).
template <typename T, int V>
__global__ void gru_forward_gates_kernel(const GruForwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  const float* xp = a.xp + b * a.xp_ld + u;
  const float* hp = a.hp + b * a.hp_ld + u;
  float r[V], z[V], k[V], t[V], h[V];
  load<V>(xp, r), load<V>(hp, t);
  for (int i = 0; i < V; ++i) r[i] = gm::sigmoid(r[i] + t[i]);
  load<V>(xp + H, z), load<V>(hp + H, t);
  for (int i = 0; i < V; ++i) z[i] = gm::sigmoid(z[i] + t[i]);
  load<V>(a.h + b * a.h_ld + u, h);
  for (int i = 0; i < V; ++i) k[i] = r[i] * h[i];
  float* rzk = a.rzk + b * a.rzk_ld + u;
  store<V>(rzk, r), store<V>(rzk + H, z), store<V>(rzk + 2 * H, k);
  T* ws = static_cast<T*>(a.ws) + b * a.ws_ld + u;
  store<V>(ws, r), store<V>(ws + H, z), store<V>(ws + 3 * H, k);
}

// reset_before, phase 2: hp is the n-gate product (r*h) W_hn^T.
template <typename T, int V>
__global__ void gru_forward_state_kernel(const GruForwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  float an[V], t[V], bn[V], r[V], z[V], h[V], nn[V];
  load<V>(a.xp + b * a.xp_ld + 2 * H + u, an), load<V>(a.hp + b * a.hp_ld + u, t), load_or_zero<V>(a.b_hn, u, bn);
  for (int i = 0; i < V; ++i) an[i] += t[i] + bn[i];
  const float* rzk = a.rzk + b * a.rzk_ld + u;
  load<V>(rzk, r), load<V>(rzk + H, z), load<V>(a.h + b * a.h_ld + u, h);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const auto o = gm::gru_forward_reset_before<float>(r[i], z[i], an[i], h[i]);
    nn[i] = o.n, h[i] = o.h;
  }
  store<V>(static_cast<T*>(a.ws) + b * a.ws_ld + 2 * H + u, nn);
  store<V>(a.h + b * a.h_ld + u, h);
  store<V>(static_cast<T*>(a.out) + b * a.out_ld + u, h);
}

template <typename T, int V>
__global__ void rnn_forward_kernel(const RnnForwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  float h[V], t[V];
  load<V>(a.xp + b * a.xp_ld + u, h), load<V>(a.hp + b * a.hp_ld + u, t);
#pragma unroll
  for (int i = 0; i < V; ++i) h[i] = gm::rnn_forward<float>(h[i] + t[i], a.relu);
  store<V>(a.h + b * a.h_ld + u, h);
  store<V>(static_cast<T*>(a.out) + b * a.out_ld + u, h);
}

// ===========================================================================
// backward
// ===========================================================================

template <typename T, int V>
__global__ void lstm_backward_kernel(const LstmBackwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  float dm[V], dc[V], gi[V], gf[V], gg[V], go[V], c[V], cp[V], pi[V], pf[V], po[V];
  output_gradient<V>(static_cast<const T*>(a.dout), a.dout_ld, a.dh, a.dh_ld, b, u, dm);
  load<V>(a.dc + b * H + u, dc);
  const T* ws = static_cast<const T*>(a.ws) + b * a.ws_ld + u;
  load<V>(ws, gi), load<V>(ws + H, gf), load<V>(ws + 2 * H, gg), load<V>(ws + 3 * H, go), load<V>(ws + 4 * H, c);
  load_prev<V, T>(a.c_prev, b, u, cp);
  load_or_zero<V>(a.peep, u, pi), load_or_zero<V>(a.peep, H + u, pf), load_or_zero<V>(a.peep, 2 * H + u, po);
  float di[V], df[V], dg[V], dO[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const auto r = a.peep ? gm::lstm_backward<float, true>(dm[i], dc[i], gi[i], gf[i], gg[i], go[i], c[i], cp[i], pi[i],
                                                           pf[i], po[i])
                          : gm::lstm_backward<float, false>(dm[i], dc[i], gi[i], gf[i], gg[i], go[i], c[i], cp[i],
                                                            pi[i], pf[i], po[i]);
    di[i] = r.da_i, df[i] = r.da_f, dg[i] = r.da_g, dO[i] = r.da_o, dc[i] = r.dc_prev;
  }
  float* dA = a.dA + b * a.dA_ld + u;
  store<V>(dA, di), store<V>(dA + H, df), store<V>(dA + 2 * H, dg), store<V>(dA + 3 * H, dO);
  store<V>(a.dc + b * H + u, dc);
}

template <typename T, int V>
__global__ void gru_backward_reset_after_kernel(const GruBackwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  float dh[V], r[V], z[V], nn[V], k[V], hp[V];
  output_gradient<V>(static_cast<const T*>(a.dout), a.dout_ld, a.dh, a.dh_ld, b, u, dh);
  const T* ws = static_cast<const T*>(a.ws) + b * a.ws_ld + u;
  load<V>(ws, r), load<V>(ws + H, z), load<V>(ws + 2 * H, nn), load<V>(ws + 3 * H, k);
  load_prev<V, T>(a.h_prev, b, u, hp);
  float dr[V], dz[V], dn[V], dnr[V], direct[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const auto g = gm::gru_backward_common<float>(dh[i], z[i], nn[i], hp[i]);
    dr[i] = gm::gru_da_r_reset_after<float>(g.da_n, r[i], k[i]);
    dz[i] = g.da_z, dn[i] = g.da_n, dnr[i] = g.da_n * r[i], direct[i] = g.dh_direct;
  }
  float* dx = a.dA_x + b * a.dA_x_ld + u;
  float* dhh = a.dA_h + b * a.dA_h_ld + u;
  store<V>(dx, dr), store<V>(dx + H, dz), store<V>(dx + 2 * H, dn);
  store<V>(dhh, dr), store<V>(dhh + H, dz), store<V>(dhh + 2 * H, dnr);
  store<V>(a.dh_direct + b * H + u, direct);
}

// reset_before, phase 1: the z and n gradients (the r gradient needs dk = da_n W_hn).
template <typename T, int V>
__global__ void gru_backward_zn_kernel(const GruBackwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  float dh[V], z[V], nn[V], hp[V];
  output_gradient<V>(static_cast<const T*>(a.dout), a.dout_ld, a.dh, a.dh_ld, b, u, dh);
  const T* ws = static_cast<const T*>(a.ws) + b * a.ws_ld + u;
  load<V>(ws + H, z), load<V>(ws + 2 * H, nn);
  load_prev<V, T>(a.h_prev, b, u, hp);
  float dz[V], dn[V], direct[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const auto g = gm::gru_backward_common<float>(dh[i], z[i], nn[i], hp[i]);
    dz[i] = g.da_z, dn[i] = g.da_n, direct[i] = g.dh_direct;
  }
  float* dx = a.dA_x + b * a.dA_x_ld + u;
  store<V>(dx + H, dz), store<V>(dx + 2 * H, dn);
  store<V>(a.dh_direct + b * H + u, direct);
}

// reset_before, phase 2: the r gradient and the part of dh_prev through k = r*h.
template <typename T, int V>
__global__ void gru_backward_r_kernel(const GruBackwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  const int64_t H = a.H;
  float dk[V], r[V], hp[V], direct[V];
  load<V>(a.dk + b * a.dk_ld + u, dk);
  load<V>(static_cast<const T*>(a.ws) + b * a.ws_ld + u, r);
  load_prev<V, T>(a.h_prev, b, u, hp);
  load<V>(a.dh_direct + b * H + u, direct);
  float dr[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    dr[i] = gm::gru_da_r_reset_before<float>(dk[i], r[i], hp[i]);
    direct[i] += dk[i] * r[i];
  }
  store<V>(a.dA_x + b * a.dA_x_ld + u, dr);
  store<V>(a.dh_direct + b * H + u, direct);
}

template <typename T, int V>
__global__ void rnn_backward_kernel(const RnnBackwardStep a) {
  int64_t b, u;
  if (!my_element<V>(a.n, a.H, b, u)) return;
  float dh[V], h[V];
  output_gradient<V>(static_cast<const T*>(a.dout), a.dout_ld, a.dh, a.dh_ld, b, u, dh);
  load<V>(static_cast<const T*>(a.out) + b * a.out_ld + u, h);
#pragma unroll
  for (int i = 0; i < V; ++i) dh[i] = gm::rnn_backward<float>(dh[i], h[i], a.relu);
  store<V>(a.dA + b * a.dA_ld + u, dh);
}

// ===========================================================================
// launchers
// ===========================================================================

// Whether every array of a launch allows V=4 accesses: H and every leading
// dimension a multiple of 4, every pointer aligned to 4 elements (column
// offsets inside a row are multiples of H).  Null pointers do not count.
class VectorRule {
 public:
  explicit VectorRule(int64_t H) : ok_(H % 4 == 0) {}
  VectorRule& f32(const void* p, int64_t ld = 0) { return check(p, ld, 4 * sizeof(float)); }
  VectorRule& storage(const void* p, int64_t ld, size_t elem) { return check(p, ld, 4 * elem); }
  VectorRule& prev(const PrevRows& p, size_t elem) {
    check(p.initial, p.initial_ld, 4 * sizeof(float));
    return check(p.rows, p.rows_ld, 4 * elem);
  }
  int width() const { return ok_ ? 4 : 1; }

 private:
  VectorRule& check(const void* p, int64_t ld, size_t bytes) {
    if (p) ok_ = ok_ && aligned(p, bytes) && ld % 4 == 0;
    return *this;
  }
  bool ok_;
};

// Launches kernel4 (V=4) or kernel1 (V=1) over n rows of H units; returns the launch's error.
template <typename Args>
cudaError_t launch_rows(const char* name, void (*kernel4)(Args), void (*kernel1)(Args), int V, const Args& a,
                        cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  return launch(name, V == 4 ? kernel4 : kernel1, dim3(pointwise_blocks(a.n, a.H, V)), dim3(kPointwiseThreads), 0,
                stream, a);
}

}  // namespace

#define FUSEDRNN_LAUNCH(KERNEL, RULE)                                                   \
  return dispatch_dtype(dtype, [&](auto tag) {                                          \
    using T = decltype(tag);                                                            \
    const int V = (RULE).width();                                                       \
    return launch_rows(#KERNEL, &KERNEL<T, 4>, &KERNEL<T, 1>, V, a, stream);             \
  })

cudaError_t lstm_forward_step(DType dtype, const LstmForwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_forward_kernel, VectorRule(a.H)
                                           .f32(a.xp, a.xp_ld)
                                           .f32(a.hp, a.hp_ld)
                                           .f32(a.c, a.H)
                                           .f32(a.peep)
                                           .storage(a.ws, a.ws_ld, sizeof(T))
                                           .f32(a.m, a.m_ld)
                                           .storage(a.out, a.out_ld, sizeof(T)));
}

cudaError_t gru_forward_step_reset_after(DType dtype, const GruForwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_forward_reset_after_kernel, VectorRule(a.H)
                                                      .f32(a.xp, a.xp_ld)
                                                      .f32(a.hp, a.hp_ld)
                                                      .f32(a.b_hn)
                                                      .f32(a.h, a.h_ld)
                                                      .storage(a.ws, a.ws_ld, sizeof(T))
                                                      .storage(a.out, a.out_ld, sizeof(T)));
}

cudaError_t gru_forward_step_gates(DType dtype, const GruForwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_forward_gates_kernel, VectorRule(a.H)
                                                .f32(a.xp, a.xp_ld)
                                                .f32(a.hp, a.hp_ld)
                                                .f32(a.h, a.h_ld)
                                                .f32(a.rzk, a.rzk_ld)
                                                .storage(a.ws, a.ws_ld, sizeof(T)));
}

cudaError_t gru_forward_step_state(DType dtype, const GruForwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_forward_state_kernel, VectorRule(a.H)
                                                .f32(a.xp, a.xp_ld)
                                                .f32(a.hp, a.hp_ld)
                                                .f32(a.b_hn)
                                                .f32(a.h, a.h_ld)
                                                .f32(a.rzk, a.rzk_ld)
                                                .storage(a.ws, a.ws_ld, sizeof(T))
                                                .storage(a.out, a.out_ld, sizeof(T)));
}

cudaError_t rnn_forward_step(DType dtype, const RnnForwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(rnn_forward_kernel, VectorRule(a.H)
                                          .f32(a.xp, a.xp_ld)
                                          .f32(a.hp, a.hp_ld)
                                          .f32(a.h, a.h_ld)
                                          .storage(a.out, a.out_ld, sizeof(T)));
}

cudaError_t lstm_backward_step(DType dtype, const LstmBackwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(lstm_backward_kernel, VectorRule(a.H)
                                            .storage(a.dout, a.dout_ld, sizeof(T))
                                            .f32(a.dh, a.dh_ld)
                                            .f32(a.dc, a.H)
                                            .storage(a.ws, a.ws_ld, sizeof(T))
                                            .prev(a.c_prev, sizeof(T))
                                            .f32(a.peep)
                                            .f32(a.dA, a.dA_ld));
}

cudaError_t gru_backward_step_reset_after(DType dtype, const GruBackwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_backward_reset_after_kernel, VectorRule(a.H)
                                                       .storage(a.dout, a.dout_ld, sizeof(T))
                                                       .f32(a.dh, a.dh_ld)
                                                       .storage(a.ws, a.ws_ld, sizeof(T))
                                                       .prev(a.h_prev, sizeof(T))
                                                       .f32(a.dA_x, a.dA_x_ld)
                                                       .f32(a.dA_h, a.dA_h_ld)
                                                       .f32(a.dh_direct, a.H));
}

cudaError_t gru_backward_step_zn(DType dtype, const GruBackwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_backward_zn_kernel, VectorRule(a.H)
                                              .storage(a.dout, a.dout_ld, sizeof(T))
                                              .f32(a.dh, a.dh_ld)
                                              .storage(a.ws, a.ws_ld, sizeof(T))
                                              .prev(a.h_prev, sizeof(T))
                                              .f32(a.dA_x, a.dA_x_ld)
                                              .f32(a.dh_direct, a.H));
}

cudaError_t gru_backward_step_r(DType dtype, const GruBackwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(gru_backward_r_kernel, VectorRule(a.H)
                                             .f32(a.dk, a.dk_ld)
                                             .storage(a.ws, a.ws_ld, sizeof(T))
                                             .prev(a.h_prev, sizeof(T))
                                             .f32(a.dA_x, a.dA_x_ld)
                                             .f32(a.dh_direct, a.H));
}

cudaError_t rnn_backward_step(DType dtype, const RnnBackwardStep& a, cudaStream_t stream) {
  FUSEDRNN_LAUNCH(rnn_backward_kernel, VectorRule(a.H)
                                           .storage(a.dout, a.dout_ld, sizeof(T))
                                           .f32(a.dh, a.dh_ld)
                                           .storage(a.out, a.out_ld, sizeof(T))
                                           .f32(a.dA, a.dA_ld));
}

#undef FUSEDRNN_LAUNCH

}  // namespace cuda
}  // namespace fusedrnn
