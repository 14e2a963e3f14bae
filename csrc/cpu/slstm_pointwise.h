// sLSTM's pointwise passes (Cell::block_diagonal(); equations: fusedrnn/cells.py, docs/design.md
// section 4): the stabilised exponential gating and the state update of one step, and its derivative,
// for a block of batch rows and a range of hidden units, as pointwise.h's passes: always_inline
// templates compiled per ISA in pointwise_dispatch.cpp, called through pointwise_dispatch.h.
//
// The operations, and their order, are fusedrnn.reference.slstm_step's and _slstm_step_backward's, so
// that the kernels agree with the reference to rounding: every clamp, max and select is written as a
// select that passes the gradient (and a NaN) as torch's clamp / maximum / where do.  The backward
// recomputes i and f from the workspace with the same functions as the forward, so its masks (which
// clamp bound, which branch m' took) are bitwise the forward's.
#pragma once

#include <fusedrnn/gate_math.h>

#include <cmath>
#include <cstdint>

#include "pointwise.h"
#include "view.h"

namespace fusedrnn {
namespace cpu {

namespace slstm {

// exp(x): float through gate_math's polynomial (its argument clamped to [-88, 88]: exp(-88) is 6e-39,
// below which the gates are 0 for every purpose), double through the C library.
FUSEDRNN_POINTWISE float exp_(float x) {
  const float e = gm::exp_clamped(gm::clamp_(x, -88.0f, 88.0f));
  return x < -88.0f ? 0.0f : e;
}
FUSEDRNN_POINTWISE double exp_(double x) { return std::exp(x); }

// log(1 + e) for e in [0, 1]: float through Cephes' logf polynomial on u = 1 + e (in [1, 2]), corrected by
// e / (u - 1) for the rounding of u (Goldberg's log1p), so that a small e keeps its relative accuracy;
// no library call, so the pass's loop vectorises.  double through the C library.
FUSEDRNN_POINTWISE float log1p_unit(float e) {
  const float u = 1.0f + e;
  // u = 2^k * mant with mant in [sqrt(1/2), sqrt(2)): k is 1 above sqrt(2)
  const bool high = u > 1.41421356f;
  const float x = (high ? 0.5f * u : u) - 1.0f;
  const float k = high ? 1.0f : 0.0f;
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  float y = p * x * z;
  y += -2.12194440e-4f * k;
  y += -0.5f * z;
  const float log_u = x + y + 0.693359375f * k;
  const float d = u - 1.0f;
  return d == 0.0f ? e : log_u * (e / d);
}
FUSEDRNN_POINTWISE double log1p_unit(double e) { return std::log1p(e); }

// log σ(x) = min(x, 0) - log(1 + exp(-|x|)) (torch's logsigmoid), which never overflows; NaN stays NaN.
template <typename T>
FUSEDRNN_POINTWISE T log_sigmoid(T x) {
  const T a = x < T(0) ? -x : x;
  const T r = (x < T(0) ? x : T(0)) - log1p_unit(exp_(-a));
  return x != x ? x : r;
}

// torch.maximum: NaN if either is.
template <typename T>
FUSEDRNN_POINTWISE T nan_max(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// The step's log forget gate and stabiliser: m' = ĩ at a unit's first step (n = 0), else max(ĩ, log f).
template <typename T>
struct Stabiliser {
  T log_f, m_new;
};

template <typename T>
FUSEDRNN_POINTWISE Stabiliser<T> stabiliser(T i_raw, T f_raw, T n, T m) {
  const T log_f = m + log_sigmoid(f_raw);
  return {log_f, n == T(0) ? i_raw : nan_max(i_raw, log_f)};
}

}  // namespace slstm

template <typename T>
struct SlstmForwardArgs {
  View<const T> xp;  // [rows, 4H]: x W_ih^T + b_ih
  View<const T> hp;  // the heads' product, gate g of unit u at row(b)[g*hp_gs + u - u0]
  int64_t hp_gs;
  const T* b_hh;     // [4H], added last, as the reference adds it (zeros without one)
  View<T> state;     // [rows, 3H]: c, n, m, read and overwritten with c', n', m'
  View<T> ws;        // [rows, 7H]: ĩ, f̃, z, o, c', n', m' (not touched without kKeepWorkspace)
  View<T> h;         // [rows, H]: h'
};

// As fusedrnn.reference.slstm_step, per element.
template <typename T, bool kKeepWorkspace>
FUSEDRNN_POINTWISE void slstm_forward_block(const Block& blk, const SlstmForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;
  const int64_t H = blk.H, gs = a.hp_gs;
  const T* FUSEDRNN_R bias = a.b_hh;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    T* FUSEDRNN_R state = a.state.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
#pragma GCC ivdep  // rows of distinct arrays; the in-place state uses one index
    for (int64_t u = u0; u < u1; ++u) {
      const T i_raw = xp[u] + hp[u] + bias[u], f_raw = xp[H + u] + hp[gs + u] + bias[H + u];
      const T z_raw = xp[2 * H + u] + hp[2 * gs + u] + bias[2 * H + u];
      const T o_raw = xp[3 * H + u] + hp[3 * gs + u] + bias[3 * H + u];
      const T c = state[u], n = state[H + u];
      const slstm::Stabiliser<T> st = slstm::stabiliser(i_raw, f_raw, n, state[2 * H + u]);
      T i = slstm::exp_(i_raw - st.m_new);
      i = i > T(1) ? T(1) : i;  // clamp(max=1): NaN passes
      T f = slstm::exp_(st.log_f - st.m_new);
      f = f > T(1) ? T(1) : f;
      const T z = gm::tanh_(z_raw), o = gm::sigmoid(o_raw);
      const T c_new = f * c + i * z;
      T n_new = f * n + i;
      n_new = n_new < T(1) ? T(1) : n_new;
      h[u] = o * c_new / n_new;
      state[u] = c_new;
      state[H + u] = n_new;
      state[2 * H + u] = st.m_new;
      if constexpr (kKeepWorkspace) {
        ws[u] = i_raw;
        ws[H + u] = f_raw;
        ws[2 * H + u] = z;
        ws[3 * H + u] = o;
        ws[4 * H + u] = c_new;
        ws[5 * H + u] = n_new;
        ws[6 * H + u] = st.m_new;
      }
    }
  }
}

template <typename T>
struct SlstmBackwardArgs {
  View<const T> dout;  // [rows, H]: the output's gradient
  View<const T> dh;    // [rows, H]: h's from the later steps (the sum of the two is h''s)
  View<T> dstate;      // [rows, 3H]: those of (c', n', m'), overwritten with those of (c, n, m)
  View<const T> ws;    // [rows, 7H]: the step's workspace
  View<const T> prev;  // the step's (c, n, m): c at row(b)[u], n at [H + u], m at [2H + u]
  View<T> dA;          // [rows, 4H]: the pre-activations' gradients
};

// As fusedrnn.reference._slstm_step_backward, per element (m differentiated; each clamp, max and select
// passing the gradient as autograd's formulas do).
template <typename T>
FUSEDRNN_POINTWISE void slstm_backward_block(const Block& blk, const SlstmBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows, H = blk.H;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dout = a.dout.row(b);
    const T* FUSEDRNN_R dhr = a.dh.row(b);
    T* FUSEDRNN_R ds_ = a.dstate.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R prev = a.prev.row(b);
    T* FUSEDRNN_R dA = a.dA.row(b);
#pragma GCC ivdep
    for (int64_t u = u0; u < u1; ++u) {
      const T dh = dout[u] + dhr[u];
      const T i_raw = ws[u], f_raw = ws[H + u], z = ws[2 * H + u], o = ws[3 * H + u];
      const T c_new = ws[4 * H + u], n_new = ws[5 * H + u], m_new = ws[6 * H + u];
      const T c = prev[u], n = prev[H + u], m = prev[2 * H + u];
      const T log_f = m + slstm::log_sigmoid(f_raw);
      const T i = slstm::exp_(i_raw - m_new);  // <= 1: m' >= ĩ, so its clamp never binds
      const T f_exp = slstm::exp_(log_f - m_new);
      const T f = f_exp > T(1) ? T(1) : f_exp;
      const T ratio = c_new / n_new;  // h' = o * ratio
      const T dc = ds_[u] + dh * o / n_new;
      // n' = max(f n + i, 1): its gradient passes where f n + i >= 1 (clamp's, inclusive)
      const T ds = f * n + i >= T(1) ? ds_[H + u] - dh * o * ratio / n_new : T(0);
      const T di = dc * z + ds;
      const T df = dc * c + ds * n;
      const T d_exp_i = di * i;
      const T d_exp_f = f_exp <= T(1) ? df * f : T(0);  // f's clamp binds only at a first step where log f > ĩ
      const T dm_new = ds_[2 * H + u] - d_exp_i - d_exp_f;
      // m' = ĩ at a unit's first step (n = 0), else max(ĩ, log f), whose gradient a tie shares evenly
      const T to_i = (n == T(0) || i_raw > log_f) ? T(1) : (i_raw < log_f ? T(0) : T(0.5));
      const T d_log_f = d_exp_f + dm_new * (T(1) - to_i);
      dA[u] = d_exp_i + dm_new * to_i;
      dA[H + u] = d_log_f * gm::sigmoid(-f_raw);
      dA[2 * H + u] = dc * i * (T(1) - z * z);
      dA[3 * H + u] = dh * ratio * o * (T(1) - o);
      ds_[u] = dc * f;
      ds_[H + u] = ds * f;
      ds_[2 * H + u] = d_log_f;
    }
  }
}

}  // namespace cpu
}  // namespace fusedrnn
