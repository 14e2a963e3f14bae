// The fused pointwise passes of one time step, for a block of batch rows and
// a range of hidden units: everything between two recurrent products.
//
// Every array is addressed as (pointer, row stride) with unit stride 1, so
// the same code serves both strategies (strategy.h): the per-step GEMM
// strategy (pre-activations in a [rows, G*H] buffer) and the fused strategy
// (a [rows, G*L] tile of one unit block).  Pointers that a pass reads for
// unit u are offset so that index u reads unit u; "hp" (the hidden-side
// product) is offset to the block's first unit.  The math is
// fusedrnn/gate_math.h, per element.
//
// These are always_inline templates compiled inside ISA-specific wrappers
// (pointwise_dispatch.cpp), so the unit loops vectorise with the wrapper's vector
// width.  For that the inner loops see only unit-stride __restrict rows, no
// optional outputs: distinct arrays never overlap (in-place updates, like the
// cell state, go through one pointer).
#pragma once

#include <fusedrnn/gate_math.h>

#include <cstdint>

#include "view.h"

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_POINTWISE inline __attribute__((always_inline))

namespace gm = ::fusedrnn::gate_math;

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

template <typename T>
struct LstmForwardArgs {
  View<const T> xp;      // [rows, 4H]: x W_ih^T + b_ih + b_hh
  View<const T> hp;      // hidden product, gate g of unit u at row(b)[g*hp_gs + u - u0]
  int64_t hp_gs;
  View<T> c;             // cell state, read (c_prev) and overwritten (c')
  const T* peep;         // [3H] (zeros without peepholes)
  View<T> ws;            // [rows, 5H]: i f g o c'
  View<T> m;             // o*tanh(c') (the output row, or the input of the projection)
};

// kKeepWorkspace false (inference): no workspace stores, 5 of the 7 stores per
// element; ws is not read.  kPeephole false: peep is not read.
template <typename T, bool kKeepWorkspace, bool kPeephole>
FUSEDRNN_POINTWISE void lstm_forward_block(const Block& blk, const LstmForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H, gs = a.hp_gs;
  const T* FUSEDRNN_R peep = a.peep;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    T* FUSEDRNN_R c = a.c.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R m = a.m.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const auto r = gm::lstm_forward<T, kPeephole>(xp[u] + hp[u], xp[H + u] + hp[gs + u], xp[2 * H + u] + hp[2 * gs + u],
                                         xp[3 * H + u] + hp[3 * gs + u], c[u], peep[u], peep[H + u],
                                         peep[2 * H + u]);
      if constexpr (kKeepWorkspace) {
        ws[u] = r.i;
        ws[H + u] = r.f;
        ws[2 * H + u] = r.g;
        ws[3 * H + u] = r.o;
        ws[4 * H + u] = r.c;
      }
      c[u] = r.c;
      m[u] = r.m;
    }
  }
}

template <typename T>
struct GruForwardArgs {
  View<const T> xp;      // [rows, 3H]: r, z with both biases; n with b_in only
  View<const T> hp;      // hidden product (reset_after: all 3 gates; reset_before: r, z / then n)
  int64_t hp_gs;
  const T* b_hn;         // [H] (zeros without bias)
  View<const T> h_prev;
  View<T> ws;            // [rows, 4H]: r z n k
  View<T> h;             // new state
};

// kKeepWorkspace false (inference): no workspace stores; ws is not read.
template <typename T, bool kKeepWorkspace = true>
FUSEDRNN_POINTWISE void gru_forward_reset_after_block(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H, gs = a.hp_gs;
  const T* FUSEDRNN_R b_hn = a.b_hn;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const T k = hp[2 * gs + u] + b_hn[u];
      const auto r = gm::gru_forward_reset_after<T>(xp[u] + hp[u], xp[H + u] + hp[gs + u], xp[2 * H + u], k,
                                                     h_prev[u]);
      if constexpr (kKeepWorkspace) {
        ws[u] = r.r;
        ws[H + u] = r.z;
        ws[2 * H + u] = r.n;
        ws[3 * H + u] = k;
      }
      h[u] = r.h;
    }
  }
}

// reset_before, phase 1: r, z and k = r*h (the operand of the n-gate product).
template <typename T>
FUSEDRNN_POINTWISE void gru_forward_reset_before_gates(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H, gs = a.hp_gs;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const T r = gm::sigmoid(xp[u] + hp[u]);
      ws[u] = r;
      ws[H + u] = gm::sigmoid(xp[H + u] + hp[gs + u]);
      ws[3 * H + u] = r * h_prev[u];
    }
  }
}

// reset_before, phase 2: hp is now the n-gate product of k.
template <typename T>
FUSEDRNN_POINTWISE void gru_forward_reset_before_state(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H;
  const T* FUSEDRNN_R b_hn = a.b_hn;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R ws = a.ws.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const auto r = gm::gru_forward_reset_before<T>(ws[u], ws[H + u], xp[2 * H + u] + hp[u] + b_hn[u], h_prev[u]);
      ws[2 * H + u] = r.n;
      h[u] = r.h;
    }
  }
}

template <typename T>
struct RnnForwardArgs {
  View<const T> xp;  // [rows, H]
  View<const T> hp;
  View<T> h;
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void rnn_forward_block(const Block& blk, const RnnForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R xp = a.xp.row(b);
    const T* FUSEDRNN_R hp = a.hp.row(b) - u0;
    T* FUSEDRNN_R h = a.h.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) h[u] = gm::rnn_forward<T>(xp[u] + hp[u], RELU);
  }
}

// IndRNN (Cell::diagonal()): h' = act(xp + u*h_prev), u = w_hh [H] element-wise.
// The hidden side has no product, so this pass is the whole step, and a unit
// depends on nothing but its own past: one thread runs a range of units through
// every step (diagonal_recurrence.cpp).  In place: each row of `h` holds
// x W_ih^T + b_ih + b_hh on entry and h' on return (the output buffer is the
// input projection's, so no second [N, H] stream).
template <typename T>
struct IndrnnForwardArgs {
  View<T> h;             // in: the step's input projection; out: its new state
  View<const T> h_prev;  // each row's previous state (the previous step's output rows, or h0)
  const T* u;            // [H]
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void indrnn_forward_block(const Block& blk, const IndrnnForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const T* FUSEDRNN_R w = a.u;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R h = a.h.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) h[u] = gm::rnn_forward<T>(h[u] + w[u] * h_prev[u], RELU);
  }
}

// Zoneout (fusedrnn/zoneout.py), after a step's pass (and LSTMP's projection): the state the step
// passes on and writes to its output rows, h = m*h_new + (1-m)*h_prev.  `h_new` is either `h` itself
// (blended in place: the cells whose backward never reads h_new) or the Elman RNN's workspace block,
// where the backward finds h_new for act'; so h and h_new may alias (no __restrict__ between them).
template <typename T>
struct ZoneoutForwardArgs {
  View<const T> mask;    // the step's rows of zoneout_mask
  View<const T> h_new;   // the cell's new state
  View<const T> h_prev;  // each row's previous state (the previous step's output rows, or h0)
  View<T> h;             // the output rows
};

template <typename T>
FUSEDRNN_POINTWISE void zoneout_forward_block(const Block& blk, const ZoneoutForwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R m = a.mask.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    const T* h_new = a.h_new.row(b);
    T* h = a.h.row(b);
#pragma GCC ivdep  // h and h_new are one array or distinct ones: the same element in, the same out
    for (int64_t u = u0; u < u1; ++u) h[u] = gm::zoneout<T>(m[u], h_new[u], h_prev[u]);
  }
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------
// Zoneout's backward, before a step's pass: the gradient of the step's blended output,
// d = dh_a + dh_b, splits into m*d (the cell's update: `cell`, which the pass then reads) and (1-m)*d,
// which flows straight to h_prev (`keep`, added to dh_prev after the recurrent product).  `cell` may
// be dh_b itself (the carried dh, split in place).
template <typename T>
struct ZoneoutBackwardArgs {
  View<const T> mask;
  View<const T> dh_a, dh_b;
  View<T> cell;
  View<T> keep;
};

template <typename T>
FUSEDRNN_POINTWISE void zoneout_backward_block(const Block& blk, const ZoneoutBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R m = a.mask.row(b);
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* dh_b = a.dh_b.row(b);
    T* cell = a.cell.row(b);
    T* FUSEDRNN_R keep = a.keep.row(b);
#pragma GCC ivdep  // cell and dh_b are one array or distinct ones: the same element in, the same out
    for (int64_t u = u0; u < u1; ++u) {
      const T d = dh_a[u] + dh_b[u];
      cell[u] = m[u] * d;
      keep[u] = (T(1) - m[u]) * d;
    }
  }
}


template <typename T>
struct LstmBackwardArgs {
  View<const T> dm_a, dm_b;  // dm = dm_a + dm_b (grad of the output row + carried dh)
  View<T> dc;                // carried dc, overwritten with dc_prev
  View<const T> ws;          // [rows, 5H]
  View<const T> c_prev;
  const T* peep;             // [3H] (zeros without peepholes)
  T* dpeep;                  // [3H] accumulated (a scratch buffer without peepholes)
  View<T> dA;                // [rows, 4H]
};

// kPeephole false: peep and dpeep are not touched (3 fewer read-modify-write
// streams per element).
template <typename T, bool kPeephole>
FUSEDRNN_POINTWISE void lstm_backward_block(const Block& blk, const LstmBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H;
  const T* FUSEDRNN_R peep = a.peep;
  T* FUSEDRNN_R dpeep = a.dpeep;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dm_a = a.dm_a.row(b);
    const T* FUSEDRNN_R dm_b = a.dm_b.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R c_prev = a.c_prev.row(b);
    T* FUSEDRNN_R dc = a.dc.row(b);
    T* FUSEDRNN_R dA = a.dA.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const T c = ws[4 * H + u];
      const T p_i = kPeephole ? peep[u] : T(0), p_f = kPeephole ? peep[H + u] : T(0);
      const T p_o = kPeephole ? peep[2 * H + u] : T(0);
      const auto r = gm::lstm_backward<T, kPeephole>(dm_a[u] + dm_b[u], dc[u], ws[u], ws[H + u], ws[2 * H + u],
                                                     ws[3 * H + u], c, c_prev[u], p_i, p_f, p_o);
      dA[u] = r.da_i;
      dA[H + u] = r.da_f;
      dA[2 * H + u] = r.da_g;
      dA[3 * H + u] = r.da_o;
      dc[u] = r.dc_prev;
      if constexpr (kPeephole) {
        dpeep[u] += r.da_i * c_prev[u];
        dpeep[H + u] += r.da_f * c_prev[u];
        dpeep[2 * H + u] += r.da_o * c;
      }
    }
  }
}

template <typename T>
struct GruBackwardArgs {
  View<const T> dh_a, dh_b;  // dh = dh_a + dh_b
  View<const T> ws;          // [rows, 4H]: r z n k
  View<const T> h_prev;
  View<T> dA_x;              // [rows, 3H]: input side
  View<T> dA_h;              // [rows, 3H]: hidden side (reset_after only)
  View<T> dh_direct;         // dh * z (the part of dh_prev not through W_hh)
};

template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_after_block(const Block& blk, const GruBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* FUSEDRNN_R dh_b = a.dh_b.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R dx = a.dA_x.row(b);
    T* FUSEDRNN_R dh = a.dA_h.row(b);
    T* FUSEDRNN_R direct = a.dh_direct.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
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
  }
}

// reset_before, phase 1: z and n gradients (dA_x z, n blocks) and dh*z.
template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_before_zn(const Block& blk, const GruBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const int64_t H = blk.H;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* FUSEDRNN_R dh_b = a.dh_b.row(b);
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R dx = a.dA_x.row(b);
    T* FUSEDRNN_R direct = a.dh_direct.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const auto g = gm::gru_backward_common<T>(dh_a[u] + dh_b[u], ws[H + u], ws[2 * H + u], h_prev[u]);
      dx[H + u] = g.da_z;
      dx[2 * H + u] = g.da_n;
      direct[u] = g.dh_direct;
    }
  }
}

// reset_before, phase 2, given dk = da_n W_hn (the gradient of k = r*h).
template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_before_r(const Block& blk, const GruBackwardArgs<T>& a,
                                                    View<const T> dk_rows) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R ws = a.ws.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    const T* FUSEDRNN_R dk = dk_rows.row(b);
    T* FUSEDRNN_R dx = a.dA_x.row(b);
    T* FUSEDRNN_R direct = a.dh_direct.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      dx[u] = gm::gru_da_r_reset_before<T>(dk[u], ws[u], h_prev[u]);
      direct[u] += dk[u] * ws[u];
    }
  }
}

template <typename T>
struct RnnBackwardArgs {
  View<const T> dh_a, dh_b;
  View<const T> h;   // the step's output
  View<T> dA;
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void rnn_backward_block(const Block& blk, const RnnBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dh_a = a.dh_a.row(b);
    const T* FUSEDRNN_R dh_b = a.dh_b.row(b);
    const T* FUSEDRNN_R h = a.h.row(b);
    T* FUSEDRNN_R dA = a.dA.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) dA[u] = gm::rnn_backward<T>(dh_a[u] + dh_b[u], h[u], RELU);
  }
}

// IndRNN's backward step: dA = (dout + dh) * act'(h') (from the output, as the
// Elman RNN's), then dh_prev = dA*u and du += dA*h_prev, all per element: the
// recurrent weight's gradient is summed here, in the order of the steps and rows,
// by the one thread that owns the unit (so the same bits with any thread count),
// instead of a second pass over dA and every row's previous state.
template <typename T>
struct IndrnnBackwardArgs {
  View<const T> dout;    // the gradient of the step's output rows
  View<T> dh;            // in: the carried gradient of h'; out: that of h_prev (one pointer: in place)
  View<const T> h;       // the step's output
  View<const T> h_prev;
  const T* u;            // [H]
  T* du;                 // [H], accumulated
  View<T> dA;            // [rows, H]
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void indrnn_backward_block(const Block& blk, const IndrnnBackwardArgs<T>& a) {
  const int64_t u0 = blk.u0, u1 = blk.u1, rows = blk.rows;  // locals: stores cannot alias them
  const T* FUSEDRNN_R w = a.u;
  T* FUSEDRNN_R du = a.du;
  for (int64_t b = 0; b < rows; ++b) {
    const T* FUSEDRNN_R dout = a.dout.row(b);
    const T* FUSEDRNN_R h = a.h.row(b);
    const T* FUSEDRNN_R h_prev = a.h_prev.row(b);
    T* FUSEDRNN_R dh = a.dh.row(b);
    T* FUSEDRNN_R dA = a.dA.row(b);
#pragma GCC ivdep  // rows of distinct arrays; in-place updates use one index
    for (int64_t u = u0; u < u1; ++u) {
      const T da = gm::rnn_backward<T>(dout[u] + dh[u], h[u], RELU);
      dA[u] = da;
      dh[u] = da * w[u];
      du[u] += da * h_prev[u];
    }
  }
}

}  // namespace cpu
}  // namespace fusedrnn
