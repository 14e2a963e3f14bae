// The row passes of the layer-normalised LSTM and GRU (Cell::layer_norm();
// equations: fusedrnn/cells.py, docs/design.md section 4), as pointwise.h's
// passes: always_inline templates compiled per ISA in pointwise_dispatch.cpp,
// called through pointwise_dispatch.h.
//
// Unlike pointwise.h's passes, which a strategy may split over hidden units,
// the row passes take whole rows: a row's layer-norm statistics are
// reductions over all of its units, so one thread owns a row from its
// statistics to its outputs (no cross-thread reduction, and the same bits
// with any thread count: layer_norm_recurrence.cpp splits the rows).  Their
// Block's u0/u1 are unused; Block::H is the hidden size.  The column pass
// (the gains' and biases' gradients, sums over all rows) is the other way
// round: a thread owns columns [u0, u1) and sums them over every row in
// order, so again no sum is split over threads.
//
// The row sums run in kLanes independent lanes (vector code under strict
// floating point, which may not reassociate one running sum) and are folded
// in a fixed order: the same bits on every ISA and with any thread count.
#pragma once

#include <fusedrnn/gate_math.h>

#include <cmath>
#include <cstdint>

#include "pointwise.h"
#include "view.h"

namespace fusedrnn {
namespace cpu {

// the epsilon of every layer normalisation (fusedrnn.cells.LAYER_NORM_EPS: haste's, torch.nn.LayerNorm's)
constexpr double kLayerNormEps = 1e-5;

namespace layer_norm {

constexpr int kLanes = 16;

// Σ term(u) for u in [0, n), in kLanes lanes folded pairwise.
template <typename T, typename F>
FUSEDRNN_POINTWISE T lane_sum(int64_t n, const F& term) {
  T acc[kLanes] = {};
  int64_t u = 0;
  for (; u + kLanes <= n; u += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += term(u + j);
  }
  for (int j = 0; u + j < n; ++j) acc[j] += term(u + j);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

template <typename T>
struct Stats {
  T mean, rstd;
  T normalised(T v) const { return (v - mean) * rstd; }
};

// Mean and 1/sqrt(biased variance + eps) of a row, the variance from the centred values (two passes
// over a row that is in L1: no cancellation where the mean is large).
template <typename T>
FUSEDRNN_POINTWISE Stats<T> row_stats(const T* FUSEDRNN_R v, int64_t n) {
  const T mean = lane_sum<T>(n, [&](int64_t u) { return v[u]; }) / T(n);
  const T var = lane_sum<T>(n, [&](int64_t u) {
    const T d = v[u] - mean;
    return d * d;
  }) / T(n);
  return {mean, T(1) / std::sqrt(var + T(kLayerNormEps))};
}

// What the backward of y = LN(v; gain) (+ shift) needs of one row besides dy and v: the row's
// statistics and mean(g), mean(g v̂) with g = dy gain and v̂ the normalised v.  Stored as kTerms
// values per row ([N, kTerms] buffers), for the column pass after the recurrence.
constexpr int64_t kTerms = 4;

template <typename T>
struct BackwardTerms {
  Stats<T> st;
  T mean_g, mean_gv;
  T dx(T dy_u, T gain_u, T vn) const { return st.rstd * (dy_u * gain_u - mean_g - vn * mean_gv); }
  void store(T* FUSEDRNN_R terms) const {
    terms[0] = st.mean;
    terms[1] = st.rstd;
    terms[2] = mean_g;
    terms[3] = mean_gv;
  }
  static BackwardTerms load(const T* FUSEDRNN_R terms) { return {{terms[0], terms[1]}, terms[2], terms[3]}; }
};

template <typename T>
FUSEDRNN_POINTWISE BackwardTerms<T> backward_terms(const T* FUSEDRNN_R dy, const T* FUSEDRNN_R v,
                                                   const T* FUSEDRNN_R gain, int64_t n) {
  const Stats<T> st = row_stats(v, n);
  const T mean_g = lane_sum<T>(n, [&](int64_t u) { return dy[u] * gain[u]; }) / T(n);
  const T mean_gv = lane_sum<T>(n, [&](int64_t u) { return dy[u] * gain[u] * st.normalised(v[u]); }) / T(n);
  return {st, mean_g, mean_gv};
}

// The gradient of v given dy, for one row of n: dx (+)= rstd (g - mean(g) - v̂ mean(g v̂)); the row's terms
// go to `terms` (the gain's gradient, Σ dy v̂ over the rows, is the column pass's).
template <typename T, bool kAccumulate>
FUSEDRNN_POINTWISE void backward_row(const T* FUSEDRNN_R dy, const T* FUSEDRNN_R v, const T* FUSEDRNN_R gain,
                                     int64_t n, T* FUSEDRNN_R dx, T* FUSEDRNN_R terms) {
  const BackwardTerms<T> bt = backward_terms(dy, v, gain, n);
  bt.store(terms);
#pragma GCC ivdep
  for (int64_t u = 0; u < n; ++u) {
    const T d = bt.dx(dy[u], gain[u], bt.st.normalised(v[u]));
    if constexpr (kAccumulate) {
      dx[u] += d;
    } else {
      dx[u] = d;
    }
  }
}

}  // namespace layer_norm

// ---------------------------------------------------------------------------
// after the recurrence: the column pass
// ---------------------------------------------------------------------------

// The column pass, for columns [u0, u1) of every row: the gain's gradient Σ dy v̂ and the shift's (or the
// bias's) Σ dy, each column summed over the rows in order; with kInPlace, also the gradient of v, over v
// itself (the input side's dXa over x W_ih^T: no second [N, G*H] buffer).
template <typename T>
struct LayerNormColumnsArgs {
  View<const T> dy;          // [rows, width]
  View<T> v;                 // [rows, width] the rows before normalisation (written only kInPlace)
  View<const T> terms;       // [rows, kTerms] each row's (layer_norm::BackwardTerms)
  const T* gain;             // [width] (read only kInPlace)
  T* dgain;                  // [width] Σ dy v̂
  T* dshift;                 // [width] Σ dy
};

template <typename T, bool kInPlace>
FUSEDRNN_POINTWISE void layer_norm_columns_block(const Block& blk, const LayerNormColumnsArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;
  const T* FUSEDRNN_R gain = a.gain;
  T* FUSEDRNN_R dgain = a.dgain;
  T* FUSEDRNN_R dshift = a.dshift;
  for (int64_t u = u0; u < u1; ++u) dgain[u] = dshift[u] = T(0);
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dy = a.dy.row(b);
    T* FUSEDRNN_R v = a.v.row(b);
    const auto bt = layer_norm::BackwardTerms<T>::load(a.terms.row(b));
#pragma GCC ivdep
    for (int64_t u = u0; u < u1; ++u) {
      const T vn = bt.st.normalised(v[u]);
      dgain[u] += dy[u] * vn;
      dshift[u] += dy[u];
      if constexpr (kInPlace) v[u] = bt.dx(dy[u], gain[u], vn);
    }
  }
}

// ---------------------------------------------------------------------------
// one step of the recurrence, per row: after the step's product h W_hh^T
// ---------------------------------------------------------------------------

// A side of the pre-activation as both cells' forward passes read it: LN(v; gain) + bias, normalised by
// the pass itself (the input side x̂ from x W_ih^T with γ_ih and b_ih, the hidden side ĥ from h W_hh^T with
// γ_hh and b_hh): one pass over the rows of x W_ih^T, not one to normalise them and another to read them.
template <typename T>
struct NormalisedRows {
  View<const T> v;    // [rows, G*H] the product
  const T* gain;      // [G*H]
  const T* bias;      // [G*H] (zeros without a bias)
};

namespace layer_norm {

// The row's LN(v; gain) + bias at unit j, given its statistics.
template <typename T>
struct NormalisedRow {
  const T* FUSEDRNN_R v;
  const T* FUSEDRNN_R gain;
  const T* FUSEDRNN_R bias;
  Stats<T> st;
  T operator()(int64_t j) const { return st.normalised(v[j]) * gain[j] + bias[j]; }
};

template <typename T>
FUSEDRNN_POINTWISE NormalisedRow<T> normalised_row(const NormalisedRows<T>& rows, int64_t b, int64_t n) {
  const T* v = rows.v.row(b);
  return {v, rows.gain, rows.bias, row_stats(v, n)};
}

}  // namespace layer_norm

// a = x̂ + ĥ; gates as the LSTM's; c' = f c + i g; h' = o tanh(LN(c'; γ_c, β_c)).
template <typename T>
struct LnLstmForwardArgs {
  NormalisedRows<T> input, hidden;
  const T* gain_c;    // [H]
  const T* shift_c;   // [H]
  View<T> c;          // cell state: c on entry, c' on return
  View<T> ws;         // [rows, 5H] i f g o c' (one step's rows, rewritten, in inference)
  View<T> h;          // [rows, H] the output rows
};

template <typename T>
FUSEDRNN_POINTWISE void ln_lstm_forward_block(const Block& blk, const LnLstmForwardArgs<T>& a) {
  const int64_t rows = blk.rows, H = blk.H;
  const T* FUSEDRNN_R gain_c = a.gain_c;
  const T* FUSEDRNN_R shift_c = a.shift_c;
  for (int64_t b = 0; b < rows; ++b) {
    T* FUSEDRNN_R c = a.c.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
    const auto x_hat = layer_norm::normalised_row(a.input, b, 4 * H);
    const auto h_hat = layer_norm::normalised_row(a.hidden, b, 4 * H);
    const auto pre = [&](int64_t j) { return x_hat(j) + h_hat(j); };
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) {
      const T i = gm::sigmoid(pre(u)), f = gm::sigmoid(pre(H + u)), g = gm::tanh_(pre(2 * H + u));
      const T o = gm::sigmoid(pre(3 * H + u));
      const T c_new = f * c[u] + i * g;
      ws[u] = i;
      ws[H + u] = f;
      ws[2 * H + u] = g;
      ws[3 * H + u] = o;
      ws[4 * H + u] = c_new;
      c[u] = c_new;
    }
    const layer_norm::Stats<T> sc = layer_norm::row_stats(c, H);
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) h[u] = ws[3 * H + u] * gm::tanh_(sc.normalised(c[u]) * gain_c[u] + shift_c[u]);
  }
}

// r = σ(x̂_r + ĥ_r), z = σ(x̂_z + ĥ_z), n = tanh(x̂_n + r ĥ_n), h' = (1-z) n + z h (PyTorch's reset_after form).
template <typename T>
struct LnGruForwardArgs {
  NormalisedRows<T> input, hidden;
  View<const T> h_prev;
  View<T> ws;         // [rows, 4H] r z n k, k = ĥ_n
  View<T> h;          // [rows, H] the output rows
};

template <typename T>
FUSEDRNN_POINTWISE void ln_gru_forward_block(const Block& blk, const LnGruForwardArgs<T>& a) {
  const int64_t rows = blk.rows, H = blk.H;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
    const auto x_hat = layer_norm::normalised_row(a.input, b, 3 * H);
    const auto k = layer_norm::normalised_row(a.hidden, b, 3 * H);
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) {
      const T k_n = k(2 * H + u);
      const auto r =
          gm::gru_forward_reset_after<T>(x_hat(u) + k(u), x_hat(H + u) + k(H + u), x_hat(2 * H + u), k_n, h_prev[u]);
      ws[u] = r.r;
      ws[H + u] = r.z;
      ws[2 * H + u] = r.n;
      ws[3 * H + u] = k_n;
      h[u] = r.h;
    }
  }
}

// What both cells' backward passes write for the input side, from its gate gradients dX̂: the row's terms
// (its dXa and the gains' gradients are the column pass's, after the recurrence, over all rows at once).
template <typename T>
struct LayerNormInputBackward {
  View<const T> xa;   // [rows, G*H] x W_ih^T (recomputed for all rows before the loop)
  const T* gain;      // γ_ih
  View<T> terms;      // [rows, kTerms]; p null: nobody wants the input side (no dX, no weight gradients)
};

template <typename T>
FUSEDRNN_POINTWISE void input_terms(const LayerNormInputBackward<T>& a, int64_t b, const T* FUSEDRNN_R dy, int64_t n) {
  if (a.terms.p != nullptr) layer_norm::backward_terms(dy, a.xa.row(b), a.gain, n).store(a.terms.row(b));
}

// What both cells' backward passes write for the hidden side, from its gate gradients dĤ.
template <typename T>
struct LayerNormHiddenBackward {
  View<const T> hp;   // [rows, G*H] h_prev W_hh^T (recomputed for all rows before the loop)
  const T* gain;      // γ_hh
  View<T> dhp;        // [rows, G*H] the gradient of hp: dh_prev = dhp W_hh (+ the direct part)
  View<T> terms;      // [rows, kTerms] the normalisation backward's terms, for the column pass (γ_hh)
};

template <typename T>
struct LnLstmBackwardArgs {
  View<const T> dh_a, dh_b;  // the gradient of h' = dh_a + dh_b (the output row's and the carried one)
  View<T> dc;                // the carried gradient of c', overwritten with that of c_prev
  View<const T> ws;          // [rows, 5H] i f g o c'
  View<const T> c_prev;
  const T* gain_c;           // [H]
  const T* shift_c;          // [H]
  View<T> dy_c;              // [rows, H] the gradient of LN(c'), and
  View<T> terms_c;           // [rows, kTerms] its backward's terms, for the column pass (γ_c, β_c)
  View<T> dA;                // [rows, 4H] the gate pre-activations' gradients (both sides' dĤ = dX̂)
  LayerNormInputBackward<T> input;
  LayerNormHiddenBackward<T> hidden;
};

template <typename T>
FUSEDRNN_POINTWISE void ln_lstm_backward_block(const Block& blk, const LnLstmBackwardArgs<T>& a) {
  const int64_t rows = blk.rows, H = blk.H;
  const T* FUSEDRNN_R gain_c = a.gain_c;
  const T* FUSEDRNN_R shift_c = a.shift_c;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* FUSEDRNN_R dh_b = a.dh_b.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R c_prev = a.c_prev.row(b);
    T* FUSEDRNN_R dc = a.dc.row(b);
    T* FUSEDRNN_R dy = a.dy_c.row(b);
    T* FUSEDRNN_R dA = a.dA.row(b);
    // h' = o tanh(y), y = LN(c'; γ_c, β_c): da_o, and dy for the normalisation's backward
    const layer_norm::Stats<T> sc = layer_norm::row_stats(ws + 4 * H, H);
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) {
      const T dh = dh_a[u] + dh_b[u], o = ws[3 * H + u];
      const T t = gm::tanh_(sc.normalised(ws[4 * H + u]) * gain_c[u] + shift_c[u]);
      dA[3 * H + u] = dh * t * gm::sigmoid_grad(o);
      dy[u] = dh * o * gm::tanh_grad(t);
    }
    // dc += the normalisation's backward: the whole gradient of c'
    layer_norm::backward_row<T, true>(dy, ws + 4 * H, gain_c, H, dc, a.terms_c.row(b));
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) {
      const T dc_total = dc[u], i = ws[u], f = ws[H + u], g = ws[2 * H + u];
      dA[u] = dc_total * g * gm::sigmoid_grad(i);
      dA[H + u] = dc_total * c_prev[u] * gm::sigmoid_grad(f);
      dA[2 * H + u] = dc_total * i * gm::tanh_grad(g);
      dc[u] = dc_total * f;
    }
    input_terms(a.input, b, dA, 4 * H);
    layer_norm::backward_row<T, false>(dA, a.hidden.hp.row(b), a.hidden.gain, 4 * H, a.hidden.dhp.row(b),
                                       a.hidden.terms.row(b));
  }
}

template <typename T>
struct LnGruBackwardArgs {
  View<const T> dh_a, dh_b;  // the gradient of h' = dh_a + dh_b
  View<const T> ws;          // [rows, 4H] r z n k
  View<const T> h_prev;
  View<T> dA_x;              // [rows, 3H] dX̂: the input side's gate gradients
  View<T> dA_h;              // [rows, 3H] dĤ: the hidden side's (the n block times r)
  View<T> dh_direct;         // dh z (the part of dh_prev not through W_hh)
  LayerNormInputBackward<T> input;
  LayerNormHiddenBackward<T> hidden;
};

template <typename T>
FUSEDRNN_POINTWISE void ln_gru_backward_block(const Block& blk, const LnGruBackwardArgs<T>& a) {
  const int64_t rows = blk.rows, H = blk.H;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* FUSEDRNN_R dh_b = a.dh_b.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R dx = a.dA_x.row(b);
    T* FUSEDRNN_R dh = a.dA_h.row(b);
    T* FUSEDRNN_R direct = a.dh_direct.row(b);
#pragma GCC ivdep
    for (int64_t u = 0; u < H; ++u) {
      const T r = ws[u], z = ws[H + u], n = ws[2 * H + u], k = ws[3 * H + u];
      const auto g = gm::gru_backward_common<T>(dh_a[u] + dh_b[u], z, n, h_prev[u]);
      const T da_r = gm::gru_da_r_reset_after<T>(g.da_n, r, k);
      dx[u] = da_r;
      dx[H + u] = g.da_z;
      dx[2 * H + u] = g.da_n;
      dh[u] = da_r;
      dh[H + u] = g.da_z;
      dh[2 * H + u] = g.da_n * r;
      direct[u] = g.dh_direct;
    }
    input_terms(a.input, b, dx, 3 * H);
    layer_norm::backward_row<T, false>(dh, a.hidden.hp.row(b), a.hidden.gain, 3 * H, a.hidden.dhp.row(b),
                                       a.hidden.terms.row(b));
  }
}

}  // namespace cpu
}  // namespace fusedrnn
