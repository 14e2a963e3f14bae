// The forward of the fused strategies (fused_strategy.h) as phases
// (fused_phases.h): the step's first product with its gate pass, then, for
// GRU reset_before the n gate's product and pass, for LSTMP the projection.
#include <algorithm>
#include <vector>

#include "dense_product.h"
#include "fused_phases.h"
#include "fused_strategy.h"
#include "pointwise_dispatch.h"
#include "recurrent_product.h"
#include "rows.h"
#include "strategy.h"

namespace fusedrnn {
namespace cpu {

namespace {

using frame::LayerWeights;
using frame::Steps;

struct ForwardThread;

// What every thread of the region reads: sizes, packed weights and the call's
// buffers, set up once per call (xp and r0 once per chunk of steps).
struct ForwardCall {
  const Steps& s;
  const ForwardBuffers& f;
  Isa isa;
  // S: the width of the recurrent state (P with an LSTM projection, else H)
  int64_t L, H, S, G, GH, W, I, nblk, nblk_p;
  bool fold, project, peephole, relu, zoneout;
  // packed: W_hh for the step's first product (GRU reset_before: the r and z
  // gates only), W_hn (GRU reset_before), W_hr (LSTMP), W_ih (folded)
  at::Tensor panels, n_panels, proj_panels, x_panels;
  at::Tensor bias;    // the folded bias (folded: zeros without biases)
  at::Tensor m_rows;  // LSTMP: m = o*tanh(c), the projection's input, [B, H]
  const float *pan, *npan, *ppan, *xpan, *h0, *x, *peep, *b_hn, *mask;
  float *out, *ws, *mbuf, *c_state;
  // unfolded: the input projection of the current chunk of steps, whose row
  // `off` is xp[(off - r0) * GH ...]
  const float* xp = nullptr;
  int64_t r0 = 0;
  PhaseList<ForwardCall, ForwardThread> phases;

  ForwardCall(const Cell& cell, const LayerWeights& w, const Steps& steps, const ForwardBuffers& buffers,
              const at::Tensor& x_rows, const at::Tensor& h0_rows, bool folded)
      : s(steps), f(buffers), isa(best_isa()), L(panel_lanes(isa)), H(f.H), S(f.Hout), G(f.G), GH(G * H), W(f.W),
        I(x_rows.size(1)), nblk((H + L - 1) / L), nblk_p((S + L - 1) / L), fold(folded),
        project(w.w_proj.defined()), peephole(w.w_peep.defined()), relu(cell.relu), zoneout(f.mask.defined()) {
    // GRU reset_before: the step's first product covers the r and z gates only;
    // the n gate's, k W_hn^T with k = r*h, follows once all of k is written (a
    // second phase)
    const bool reset_before = cell.family == Family::gru && !cell.reset_after;
    panels = pack_panels(reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh, reset_before ? 2 : G, L, false);
    if (reset_before) n_panels = pack_panels(w.w_hh.narrow(0, 2 * H, H), 1, L, false);
    // LSTMP: h = m W_hr^T, a second product per step over the P output units,
    // after all of m is written (a second phase); m lives in a [B, H] scratch
    if (project) {
      proj_panels = pack_panels(w.w_proj, 1, L, false);
      m_rows = at::empty({s.batch, H}, x_rows.options());
    }
    bias = frame::folded_bias(cell, w, H);
    if (fold) x_panels = pack_panels(w.w_ih, G, L, false);
    if (fold && !bias.defined()) bias = at::zeros({GH}, x_rows.options());
    pan = ptr<float>(panels);
    npan = ptr<float>(n_panels);
    ppan = ptr<float>(proj_panels);
    xpan = ptr<float>(x_panels);
    h0 = ptr<float>(h0_rows);
    x = ptr<float>(x_rows);
    peep = ptr<float>(f.peep);
    b_hn = ptr<float>(f.b_hn);
    mask = ptr<float>(f.mask);
    out = ptr<float>(f.out);
    ws = ptr<float>(f.ws);
    mbuf = ptr<float>(m_rows);
    c_state = ptr<float>(f.c_state);
  }

  // What the gate passes add to the tile as "xp": the projected input rows,
  // or folded, the bias alone (one row, stride 0).
  View<const float> xp_rows(const StepRows& st) const {
    return fold ? cview(ptr<float>(bias), 0) : cview(xp + (st.off - r0) * GH, GH);
  }
  // The workspace rows of the step.
  float* ws_rows(const StepRows& st) const { return ws + f.ws_row(st.off) * W; }
  // The step's rows, units of the nb blocks from blk.
  Block block(const StepRows& st, int64_t blk, int64_t nb) const {
    return Block{st.n, blk * L, std::min(H, (blk + nb) * L), H};
  }
};

// Zoneout: the step's output rows, state units [u0, u1), blended with each row's previous state (the
// previous step's output rows, or h0's); h_new is read from `h_new` (the output rows themselves, or the
// Elman RNN's workspace block).  Right after the pass that wrote h_new, on the same thread and units:
// the other threads read only the previous step's rows in this step.
void zoneout_blend(const ForwardCall& c, const StepRows& st, int64_t u0, int64_t u1, View<const float> h_new) {
  for_prev_segments<float>(c.s, st.p, Block{st.n, u0, u1, c.S}, c.out, 0, c.S, c.h0, c.S,
                           [&](const Block& sub, int64_t shift, View<const float> h_prev) {
    ZoneoutForwardArgs<float> a;
    a.mask = cview(c.mask + (st.off + shift) * c.S, c.S);
    a.h_new = shifted(h_new, shift);
    a.h_prev = h_prev;
    a.h = view(c.out + (st.off + shift) * c.S, c.S);
    pw_zoneout_forward(sub, a);
  });
}

// A thread's share: its unit blocks, fixed for the whole sequence (so its
// panels stay in its cache), and its product tile.
struct ForwardThread {
  int64_t blk0, blk1;    // blocks of the H gate units
  int64_t pblk0, pblk1;  // blocks of the P output units (LSTMP)
  // the widest product: G gates of one block, or one gate of two blocks (RNN, LSTMP)
  std::vector<float> tile;

  ForwardThread(const ForwardCall& c, int tid, int nt)
      : tile(static_cast<size_t>(c.s.batch * std::max<int64_t>(c.G, 2) * c.L)) {
    split_range(c.nblk, tid, nt, blk0, blk1);
    split_range(c.nblk_p, tid, nt, pblk0, pblk1);
  }
};

// The step's first product for blocks [blk, blk + nb), `gates` gates each,
// into the tile (rows from `shift` at tile + shift * gates * L * nb).  Its
// left operands: folded, x_t's rows; then h_prev, read where it lies: the
// previous step's output rows, then (reverse direction of packed input) h0's
// rows for the sequences that start at this step.
void gate_product(const ForwardCall& c, ForwardThread& th, const StepRows& st, int64_t blk, int64_t nb,
                  int64_t gates) {
  for_prev_segments<float>(c.s, st.p, c.block(st, blk, nb), c.out, 0, c.S, c.h0, c.S,
                           [&](const Block& sub, int64_t shift, View<const float> h_prev) {
    ProductTerm terms[2];
    int nterms = 0;
    if (c.fold) terms[nterms++] = ProductTerm{c.x + (st.off + shift) * c.I, c.I, c.I, c.xpan + blk * c.G * c.I * c.L};
    terms[nterms++] = ProductTerm{h_prev.p, h_prev.rs, c.S, c.pan + blk * gates * c.S * c.L};
    product_tile(c.isa, terms, nterms, sub.rows, gates * nb, th.tile.data() + shift * gates * c.L * nb);
  });
}

void lstm_gates(const ForwardCall& c, ForwardThread& th, const StepRows& st) {
  for (int64_t blk = th.blk0; blk < th.blk1; ++blk) {
    gate_product(c, th, st, blk, 1, c.G);
    LstmForwardArgs<float> a;
    a.xp = c.xp_rows(st);
    a.hp = cview(th.tile.data(), c.G * c.L);
    a.hp_gs = c.L;
    a.c = view(c.c_state, c.H);
    a.peep = c.peep;
    a.ws = view(c.ws_rows(st), c.W);
    a.m = c.project ? view(c.mbuf, c.H) : view(c.out + st.off * c.H, c.H);
    pw_lstm_forward_for(c.f.keep_workspace, c.peephole, c.block(st, blk, 1), a);
    if (c.zoneout && !c.project) {  // LSTMP blends the projected h instead (lstm_projection)
      const Block b = c.block(st, blk, 1);
      zoneout_blend(c, st, b.u0, b.u1, cview(c.out + st.off * c.S, c.S));
    }
  }
}

// LSTMP, once all of m is written: each thread projects its share of the P
// output units, two blocks per product.
void lstm_projection(const ForwardCall& c, ForwardThread& th, const StepRows& st) {
  for_block_groups(th.pblk0, th.pblk1, 2, [&](int64_t pb, int64_t nb) {
    const int64_t q0 = pb * c.L, q1 = std::min(c.S, (pb + nb) * c.L);
    product_tile(c.isa, c.mbuf, c.H, st.n, c.H, c.ppan + pb * c.H * c.L, nb, th.tile.data());
    copy_tile_rows(th.tile.data(), nb * c.L, st.n, q1 - q0, c.out + st.off * c.S + q0, c.S);
    if (c.zoneout) zoneout_blend(c, st, q0, q1, cview(c.out + st.off * c.S, c.S));
  });
}

// A GRU pass's arguments for the rows from `shift` (h_prev's segment) and its product tile.
GruForwardArgs<float> gru_args(const ForwardCall& c, const StepRows& st, int64_t shift, View<const float> h_prev,
                               View<const float> hp) {
  GruForwardArgs<float> a;
  a.xp = shifted(c.xp_rows(st), shift);
  a.hp = hp;
  a.hp_gs = c.L;
  a.b_hn = c.b_hn;
  a.h_prev = h_prev;
  a.ws = view(c.ws_rows(st) + shift * c.W, c.W);
  a.h = view(c.out + (st.off + shift) * c.H, c.H);
  return a;
}

// reset_after: all three gates and the new state; reset_before: r, z and k = r*h.
template <bool kResetBefore>
void gru_gates(const ForwardCall& c, ForwardThread& th, const StepRows& st) {
  constexpr int64_t gates = kResetBefore ? 2 : 3;
  for (int64_t blk = th.blk0; blk < th.blk1; ++blk) {
    gate_product(c, th, st, blk, 1, gates);
    for_prev_segments<float>(c.s, st.p, c.block(st, blk, 1), c.out, 0, c.H, c.h0, c.H,
                             [&](const Block& sub, int64_t shift, View<const float> h_prev) {
      const View<const float> hp = cview(th.tile.data() + shift * gates * c.L, gates * c.L);
      const GruForwardArgs<float> a = gru_args(c, st, shift, h_prev, hp);
      if constexpr (kResetBefore) {
        pw_gru_forward_gates(sub, a);
      } else {
        pw_gru_forward_after_for(c.f.keep_workspace, sub, a);
      }
    });
    if (!kResetBefore && c.zoneout) {  // reset_before has h_new after its second phase (gru_n_gate)
      const Block b = c.block(st, blk, 1);
      zoneout_blend(c, st, b.u0, b.u1, cview(c.out + st.off * c.S, c.S));
    }
  }
}

// GRU reset_before, once all of k is written: the n gate's product k W_hn^T and the new state.
void gru_n_gate(const ForwardCall& c, ForwardThread& th, const StepRows& st) {
  const float* k_rows = c.ws_rows(st) + 3 * c.H;
  for (int64_t blk = th.blk0; blk < th.blk1; ++blk) {
    product_tile(c.isa, k_rows, c.W, st.n, c.H, c.npan + blk * c.H * c.L, 1, th.tile.data());
    for_prev_segments<float>(c.s, st.p, c.block(st, blk, 1), c.out, 0, c.H, c.h0, c.H,
                             [&](const Block& sub, int64_t shift, View<const float> h_prev) {
      pw_gru_forward_state(sub, gru_args(c, st, shift, h_prev, cview(th.tile.data() + shift * c.L, c.L)));
    });
    if (c.zoneout) {
      const Block b = c.block(st, blk, 1);
      zoneout_blend(c, st, b.u0, b.u1, cview(c.out + st.off * c.S, c.S));
    }
  }
}

// RNN (one gate): two adjacent unit blocks per product, whose panels are
// adjacent, so the micro-kernel runs with C = 2 panels (2 panel loads per
// 12 broadcasts instead of 1 per 16); tile row = the units of both blocks.
void rnn_gates(const ForwardCall& c, ForwardThread& th, const StepRows& st) {
  for_block_groups(th.blk0, th.blk1, 2, [&](int64_t blk, int64_t nb) {
    gate_product(c, th, st, blk, nb, 1);
    RnnForwardArgs<float> a;
    a.xp = c.xp_rows(st);
    a.hp = cview(th.tile.data(), nb * c.L);
    if (!c.zoneout) {
      a.h = view(c.out + st.off * c.H, c.H);
      pw_rnn_forward(c.relu, c.block(st, blk, nb), a);
      return;
    }
    // zoneout: h_new into the workspace's last block (the backward's act' reads it there), then the blend
    const View<float> h_new = view(c.ws_rows(st) + (c.W - c.H), c.W);
    a.h = h_new;
    const Block b = c.block(st, blk, nb);
    pw_rnn_forward(c.relu, b, a);
    zoneout_blend(c, st, b.u0, b.u1, cview(h_new.p, h_new.rs));
  });
}

PhaseList<ForwardCall, ForwardThread> forward_phases(const Cell& cell, bool project) {
  PhaseList<ForwardCall, ForwardThread> phases;
  if (cell.family == Family::lstm) {
    phases.add(lstm_gates);
    if (project) phases.add(lstm_projection);
  } else if (cell.family == Family::gru) {
    if (cell.reset_after) {
      phases.add(gru_gates<false>);
    } else {
      phases.add(gru_gates<true>);
      phases.add(gru_n_gate);
    }
  } else {
    phases.add(rnn_gates);
  }
  return phases;
}

}  // namespace

void fused_forward(const Cell& cell, const LayerWeights& w, const Steps& s, ForwardBuffers& f, const at::Tensor& x,
                   const at::Tensor& h0, bool fold) {
  ForwardCall c(cell, w, s, f, x, h0, fold);
  c.phases = forward_phases(cell, c.project);
  const int64_t T = s.count();
  const int nthreads = threads_for_step(s.batch * c.G * c.H * c.S, c.nblk);
  // steps [p0, p1) in one parallel region
  const auto run_steps = [&](int64_t p0, int64_t p1) {
    run_parallel(nthreads, [&](int tid, int nt, Barrier& barrier) {
      ForwardThread th(c, tid, nt);
      for (int64_t p = p0; p < p1; ++p) c.phases.run_step(c, th, step_rows(s, p), barrier);
    });
  };
  if (fold) {
    run_steps(0, T);
    return;
  }
  // Otherwise the input projection runs a chunk of steps at a time, right
  // before their recurrence, into buffers of about 2 MiB: the pointwise passes
  // then read it from cache rather than DRAM, and no [T*B, G*H] buffer is
  // allocated (and page-faulted in) per call.  A chunk is whole steps, whose
  // rows are contiguous in x in either direction.
  const int64_t chunk_rows = std::max<int64_t>(256, (int64_t(2) << 20) / (c.GH * int64_t(sizeof(float))));
  for (int64_t p0 = 0, p1 = 0; p0 < T; p0 = p1) {
    int64_t rows = 0;
    do {
      rows += s.size[s.order[p1++]];
    } while (p1 < T && rows + s.size[s.order[p1]] <= chunk_rows);
    const int64_t r0 = std::min(s.offset[s.order[p0]], s.offset[s.order[p1 - 1]]);
    const at::Tensor xp_chunk = linear(x.narrow(0, r0, rows), w.w_ih, c.bias);
    c.xp = ptr<float>(xp_chunk);
    c.r0 = r0;
    run_steps(p0, p1);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
