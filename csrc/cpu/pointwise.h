// The fused pointwise passes of one time step, for a block of batch rows and
// a range of hidden units: everything between two recurrent products.
//
// Every array is addressed as (pointer, row stride, unit stride) so the same
// code serves both strategies of sequence.cpp: the per-step GEMM strategy
// (pre-activations in a [rows, G*H] buffer) and the fused strategy (a
// [rows, G*L] register tile of one unit block, states kept transposed for the
// micro-kernel).  Pointers that a pass reads for unit u are offset so that
// index u of the block reads unit u; "hp" (the hidden-side product) is offset
// to the block's first unit.  The math is fusedrnn/gate_math.h, per element.
//
// These are always_inline templates: they are compiled inside ISA-specific
// wrappers (see sequence.cpp), so the unit loops vectorise with the wrapper's
// vector width.
#pragma once

#include <fusedrnn/gate_math.h>

#include <cstdint>

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_POINTWISE inline __attribute__((always_inline))

namespace gm = ::fusedrnn::gate_math;

// A strided 2-D view: element (row b, unit u) at p[b*rs + u*us].
template <typename T>
struct View {
  T* p = nullptr;
  int64_t rs = 0, us = 1;
  T& at(int64_t b, int64_t u) const { return p[b * rs + u * us]; }
  T* row(int64_t b) const { return p + b * rs; }
};

// The rows and units one call covers; `u0` is the first unit (for "hp").
struct Block {
  int64_t rows;
  int64_t u0, u1;
  int64_t H;  // hidden size: distance between gate blocks of xp / ws / dA
};

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

template <typename T>
struct LstmForwardArgs {
  View<const T> xp;      // [rows, 4H]: x W_ih^T + b_ih + b_hh
  View<const T> hp;      // hidden product, gate g of unit u at row(b)[g*gs + u - u0]
  int64_t hp_gs;
  View<T> c;             // cell state, read (c_prev) and overwritten (c')
  const T* peep;         // [3H] (zeros without peepholes)
  View<T> ws;            // [rows, 5H]: i f g o c'
  View<T> m;             // o*tanh(c'), first destination
  View<T> m2;            // second destination (state copy), may be null
};

template <typename T>
FUSEDRNN_POINTWISE void lstm_forward_block(const Block& blk, const LstmForwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* xp = a.xp.row(b);
    const T* hp = a.hp.row(b) - blk.u0;
    T* ws = a.ws.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const auto r = gm::lstm_forward<T>(xp[u] + hp[u], xp[H + u] + hp[a.hp_gs + u], xp[2 * H + u] + hp[2 * a.hp_gs + u],
                                         xp[3 * H + u] + hp[3 * a.hp_gs + u], a.c.at(b, u), a.peep[u],
                                         a.peep[H + u], a.peep[2 * H + u]);
      ws[u] = r.i;
      ws[H + u] = r.f;
      ws[2 * H + u] = r.g;
      ws[3 * H + u] = r.o;
      ws[4 * H + u] = r.c;
      a.c.at(b, u) = r.c;
      a.m.at(b, u) = r.m;
      if (a.m2.p) a.m2.at(b, u) = r.m;
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
  View<T> h;             // new state, first destination
  View<T> h2;            // second destination, may be null
};

template <typename T>
FUSEDRNN_POINTWISE void gru_forward_reset_after_block(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* xp = a.xp.row(b);
    const T* hp = a.hp.row(b) - blk.u0;
    T* ws = a.ws.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T k = hp[2 * a.hp_gs + u] + a.b_hn[u];
      const auto r = gm::gru_forward_reset_after<T>(xp[u] + hp[u], xp[H + u] + hp[a.hp_gs + u], xp[2 * H + u], k,
                                                     a.h_prev.at(b, u));
      ws[u] = r.r;
      ws[H + u] = r.z;
      ws[2 * H + u] = r.n;
      ws[3 * H + u] = k;
      a.h.at(b, u) = r.h;
      if (a.h2.p) a.h2.at(b, u) = r.h;
    }
  }
}

// reset_before, phase 1: r, z and k = r*h (the operand of the n-gate product).
template <typename T>
FUSEDRNN_POINTWISE void gru_forward_reset_before_gates(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* xp = a.xp.row(b);
    const T* hp = a.hp.row(b) - blk.u0;
    T* ws = a.ws.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T r = gm::sigmoid(xp[u] + hp[u]);
      ws[u] = r;
      ws[H + u] = gm::sigmoid(xp[H + u] + hp[a.hp_gs + u]);
      ws[3 * H + u] = r * a.h_prev.at(b, u);
    }
  }
}

// reset_before, phase 2: hp is now the n-gate product of k.
template <typename T>
FUSEDRNN_POINTWISE void gru_forward_reset_before_state(const Block& blk, const GruForwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* xp = a.xp.row(b);
    const T* hp = a.hp.row(b) - blk.u0;
    T* ws = a.ws.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const auto r = gm::gru_forward_reset_before<T>(ws[u], ws[H + u], xp[2 * H + u] + hp[u] + a.b_hn[u],
                                                      a.h_prev.at(b, u));
      ws[2 * H + u] = r.n;
      a.h.at(b, u) = r.h;
      if (a.h2.p) a.h2.at(b, u) = r.h;
    }
  }
}

template <typename T>
struct RnnForwardArgs {
  View<const T> xp;  // [rows, H]
  View<const T> hp;
  View<T> h;
  View<T> h2;
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void rnn_forward_block(const Block& blk, const RnnForwardArgs<T>& a) {
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* xp = a.xp.row(b);
    const T* hp = a.hp.row(b) - blk.u0;
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T h = gm::rnn_forward<T>(xp[u] + hp[u], RELU);
      a.h.at(b, u) = h;
      if (a.h2.p) a.h2.at(b, u) = h;
    }
  }
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

template <typename T>
struct LstmBackwardArgs {
  View<const T> dm_a, dm_b;  // dm = dm_a + dm_b (grad of the output row + carried dh)
  View<T> dc;                // carried dc, overwritten with dc_prev
  View<const T> ws;          // [rows, 5H]
  View<const T> c_prev;
  const T* peep;             // [3H]
  T* dpeep;                  // [3H] accumulated (null: not needed)
  View<T> dA;                // [rows, 4H]
  View<T> dA2;               // second destination (transposed copy), gate stride dA2_gs; may be null
  int64_t dA2_gs;
};

template <typename T>
FUSEDRNN_POINTWISE void lstm_backward_block(const Block& blk, const LstmBackwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* ws = a.ws.row(b);
    T* dA = a.dA.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T c_prev = a.c_prev.at(b, u);
      const T c = ws[4 * H + u];
      const auto r = gm::lstm_backward<T>(a.dm_a.at(b, u) + a.dm_b.at(b, u), a.dc.at(b, u), ws[u], ws[H + u],
                                          ws[2 * H + u], ws[3 * H + u], c, c_prev, a.peep[u], a.peep[H + u],
                                          a.peep[2 * H + u]);
      dA[u] = r.da_i;
      dA[H + u] = r.da_f;
      dA[2 * H + u] = r.da_g;
      dA[3 * H + u] = r.da_o;
      a.dc.at(b, u) = r.dc_prev;
      if (a.dpeep) {
        a.dpeep[u] += r.da_i * c_prev;
        a.dpeep[H + u] += r.da_f * c_prev;
        a.dpeep[2 * H + u] += r.da_o * c;
      }
      if (a.dA2.p) {
        a.dA2.at(b, u) = r.da_i;
        a.dA2.at(b, a.dA2_gs + u) = r.da_f;
        a.dA2.at(b, 2 * a.dA2_gs + u) = r.da_g;
        a.dA2.at(b, 3 * a.dA2_gs + u) = r.da_o;
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
  View<T> dA_h;              // [rows, 3H]: hidden side (reset_after; may alias dA_x for reset_before)
  View<T> dh_direct;         // dh * z (the part of dh_prev not through W_hh)
  View<T> dA2;               // transposed copy of dA_h, gate stride dA2_gs; may be null
  int64_t dA2_gs;
};

template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_after_block(const Block& blk, const GruBackwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* ws = a.ws.row(b);
    T* dx = a.dA_x.row(b);
    T* dh = a.dA_h.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T r = ws[u], z = ws[H + u], n = ws[2 * H + u], k = ws[3 * H + u];
      const auto g = gm::gru_backward_common<T>(a.dh_a.at(b, u) + a.dh_b.at(b, u), z, n, a.h_prev.at(b, u));
      const T da_r = gm::gru_da_r_reset_after<T>(g.da_n, r, k);
      const T da_hn = g.da_n * r;
      dx[u] = da_r;
      dx[H + u] = g.da_z;
      dx[2 * H + u] = g.da_n;
      dh[u] = da_r;
      dh[H + u] = g.da_z;
      dh[2 * H + u] = da_hn;
      a.dh_direct.at(b, u) = g.dh_direct;
      if (a.dA2.p) {
        a.dA2.at(b, u) = da_r;
        a.dA2.at(b, a.dA2_gs + u) = g.da_z;
        a.dA2.at(b, 2 * a.dA2_gs + u) = da_hn;
      }
    }
  }
}

// reset_before, phase 1: z and n gradients (dA_x z, n blocks) and dh*z.
template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_before_zn(const Block& blk, const GruBackwardArgs<T>& a) {
  const int64_t H = blk.H;
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* ws = a.ws.row(b);
    T* dx = a.dA_x.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const auto g = gm::gru_backward_common<T>(a.dh_a.at(b, u) + a.dh_b.at(b, u), ws[H + u], ws[2 * H + u],
                                                a.h_prev.at(b, u));
      dx[H + u] = g.da_z;
      dx[2 * H + u] = g.da_n;
      a.dh_direct.at(b, u) = g.dh_direct;
    }
  }
}

// reset_before, phase 2, given dk = da_n W_hn (the gradient of k = r*h).
template <typename T>
FUSEDRNN_POINTWISE void gru_backward_reset_before_r(const Block& blk, const GruBackwardArgs<T>& a,
                                                    View<const T> dk) {
  for (int64_t b = 0; b < blk.rows; ++b) {
    const T* ws = a.ws.row(b);
    T* dx = a.dA_x.row(b);
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T r = ws[u], h_prev = a.h_prev.at(b, u), d = dk.at(b, u);
      dx[u] = gm::gru_da_r_reset_before<T>(d, r, h_prev);
      a.dh_direct.at(b, u) += d * r;
    }
  }
}

template <typename T>
struct RnnBackwardArgs {
  View<const T> dh_a, dh_b;
  View<const T> h;   // the step's output
  View<T> dA;
  View<T> dA2;       // transposed copy; may be null
};

template <typename T, bool RELU>
FUSEDRNN_POINTWISE void rnn_backward_block(const Block& blk, const RnnBackwardArgs<T>& a) {
  for (int64_t b = 0; b < blk.rows; ++b) {
    for (int64_t u = blk.u0; u < blk.u1; ++u) {
      const T d = gm::rnn_backward<T>(a.dh_a.at(b, u) + a.dh_b.at(b, u), a.h.at(b, u), RELU);
      a.dA.at(b, u) = d;
      if (a.dA2.p) a.dA2.at(b, u) = d;
    }
  }
}

}  // namespace cpu
}  // namespace fusedrnn
