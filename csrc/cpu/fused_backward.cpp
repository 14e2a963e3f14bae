// The backward of the fused strategies (fused_strategy.h) as phases
// (fused_phases.h), steps in reverse order: the carried dh (the product of
// the step processed before's dA with W_hh) and the pointwise pass, then for
// GRU reset_before the r gate's product and pass; LSTMP first forms dout + dh
// over the P units, then projects it back and runs the pass.
#include <algorithm>
#include <vector>

#include "backward_pointwise.h"
#include "fused_phases.h"
#include "fused_strategy.h"
#include "pointwise_dispatch.h"
#include "recurrent_product.h"
#include "strategy.h"

namespace fusedrnn {
namespace cpu {

namespace {

using frame::LayerWeights;
using frame::Steps;

// Unit blocks go two at a time through the product: adjacent blocks'
// panels are adjacent, so they read as one product of C = 2 panels, whose
// micro-kernel loads 2 panel vectors per 12 broadcasts instead of 1 per 16.
constexpr int64_t kPair = 2;

struct BackwardThread;

// What every thread of the region reads, set up once per call.
struct BackwardCall {
  const Cell& cell;
  const Steps& s;
  BackwardBuffers& bb;  // the pointwise passes write its rows
  Isa isa;
  // S: the width of the recurrent state (P with an LSTM projection, else H);
  // K: the rows of W_hh in the carried product
  int64_t L, H, S, G, GH, K, T, nblk, nblk_s;
  bool project;
  // dh_prev = dA W_hh: the units of the product are W_hh's S columns.  GRU
  // reset_before: only the r, z rows (K = 2H; the n gate reaches h through
  // dk*r, in dh_direct), and dk = da_n W_hn over the H units once all of the
  // step's da_n is written (a second phase)
  at::Tensor panels, n_panels;
  // LSTMP: dm = (dout + dh) W_hr, units the H columns of W_hr, after all of
  // the step's dout + dh (kept in dH_total for dW_hr) is written
  at::Tensor proj_panels, dm_rows, zero_row;
  const float *pan, *npan, *ppan, *direct, *dout, *dA_h;
  float *dm, *dH_total, *dh;
  // zoneout: the mask rows and dh_keep (the (1-m) part of dh, added by the carry); null without zoneout
  const float* mask;
  float* keep;
  PhaseList<BackwardCall, BackwardThread> phases;

  BackwardCall(const Cell& c, const LayerWeights& w, const Steps& steps, BackwardBuffers& buffers)
      : cell(c), s(steps), bb(buffers), isa(best_isa()), L(panel_lanes(isa)), H(bb.H), S(bb.Hout), G(bb.G),
        GH(G * H), T(s.count()), nblk((H + L - 1) / L), nblk_s((S + L - 1) / L), project(w.w_proj.defined()) {
    const bool reset_before = cell.family == Family::gru && !cell.reset_after;
    K = reset_before ? 2 * H : GH;
    panels = pack_panels(reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh, 1, L, true);
    if (reset_before) n_panels = pack_panels(w.w_hh.narrow(0, 2 * H, H), 1, L, true);
    if (project) {
      proj_panels = pack_panels(w.w_proj, 1, L, true);
      dm_rows = at::empty({s.batch, H}, bb.dh_state.options());
    }
    // the pass's second gradient term where the first holds all of it (LSTMP's dm, zoneout's m*dh)
    if (project || bb.mask.defined()) zero_row = at::zeros({H}, bb.dh_state.options());
    pan = ptr<float>(panels);
    npan = ptr<float>(n_panels);
    ppan = ptr<float>(proj_panels);
    direct = ptr<float>(bb.dh_direct);
    dout = ptr<float>(bb.dout);
    dA_h = ptr<float>(bb.dA_h);
    dm = ptr<float>(dm_rows);
    dH_total = ptr<float>(bb.dH_total);
    dh = ptr<float>(bb.dh_state);
    mask = ptr<float>(bb.mask);
    keep = ptr<float>(bb.dh_keep);
  }
};

// A thread's share: its blocks of the H gate units and of the S state units
// (the same without a projection), and its product tile.
struct BackwardThread {
  int64_t blk0, blk1, sblk0, sblk1;
  std::vector<float> tile;

  BackwardThread(const BackwardCall& c, int tid, int nt) : tile(static_cast<size_t>(c.s.batch * kPair * c.L)) {
    split_range(c.nblk, tid, nt, blk0, blk1);
    split_range(c.nblk_s, tid, nt, sblk0, sblk1);
  }
};

// dh[b, u] for the rows of the step processed before (in backward order, at
// position q), state units of the `nb` blocks from `blk`: the product of that
// step's dA rows (where the pointwise pass wrote them) with W_hh
void carry(const BackwardCall& c, BackwardThread& th, int64_t q, int64_t blk, int64_t nb) {
  const int64_t n_prev = c.s.size[c.s.order[q]];
  const int64_t u0 = blk * c.L, u1 = std::min(c.S, (blk + nb) * c.L), ld = nb * c.L;
  product_tile(c.isa, c.dA_h + c.s.offset[c.s.order[q]] * c.GH, c.GH, n_prev, c.K, c.pan + blk * c.K * c.L, nb,
               th.tile.data());
  for (int64_t b = 0; b < n_prev; ++b)
    for (int64_t u = u0; u < u1; ++u)
      c.dh[b * c.S + u] = th.tile[b * ld + (u - u0)] + (c.direct ? c.direct[b * c.H + u] : 0.0f);
  if (!c.keep) return;
  // zoneout: (1-m)*dh of that step's rows (its split, on this thread's units) reaches h_prev directly
  for (int64_t b = 0; b < n_prev; ++b)
    for (int64_t u = u0; u < u1; ++u) c.dh[b * c.S + u] += c.keep[b * c.S + u];
}

// Zoneout: the gradient of the step's blended output rows, state units [u0, u1), split into m*d for the
// cell (`cell`) and (1-m)*d for h_prev (dh_keep, which the next carry adds), d = dout + dh.
void zoneout_split(const BackwardCall& c, const StepRows& st, int64_t u0, int64_t u1, View<float> cell) {
  ZoneoutBackwardArgs<float> a;
  a.mask = cview(c.mask + st.off * c.S, c.S);
  a.dh_a = cview(c.dout + st.off * c.S, c.S);
  a.dh_b = cview(c.dh, c.S);
  a.cell = cell;
  a.keep = view(c.keep, c.S);
  pw_zoneout_backward(Block{st.n, u0, u1, c.S}, a);
}

// the pointwise pass of the step over hidden-unit blocks [pair, pair + nb)
void pointwise(const BackwardCall& c, const StepRows& st, int64_t pair, int64_t nb, View<const float> dh_a,
               View<const float> dh_b) {
  for (int64_t blk = pair; blk < pair + nb; ++blk) {
    const int64_t u0 = blk * c.L, u1 = std::min(c.H, u0 + c.L);
    step_backward_pointwise<float>(c.cell, c.s, st.p, c.bb, Block{st.n, u0, u1, c.H}, dh_a, dh_b);
  }
}

// Without a projection: the carried dh of each block pair, then the pass on
// the same units (dout + dh).
void carry_and_pointwise(const BackwardCall& c, BackwardThread& th, const StepRows& st) {
  for_block_groups(th.blk0, th.blk1, kPair, [&](int64_t pair, int64_t nb) {
    if (st.p < c.T - 1) carry(c, th, st.p + 1, pair, nb);
    if (!c.mask) {
      pointwise(c, st, pair, nb, cview(c.dout + st.off * c.H, c.H), cview(c.dh, c.H));
      return;
    }
    zoneout_split(c, st, pair * c.L, std::min(c.H, (pair + nb) * c.L), view(c.dh, c.H));  // dh = m*(dout + dh)
    pointwise(c, st, pair, nb, cview(ptr<float>(c.zero_row), 0), cview(c.dh, c.H));
  });
}

// GRU reset_before, once all of da_n is written: dk = da_n W_hn, then the r
// gate's gradient and dh_direct += dk*r.
void gru_reset_gate(const BackwardCall& c, BackwardThread& th, const StepRows& st) {
  for_block_groups(th.blk0, th.blk1, kPair, [&](int64_t pair, int64_t nb) {
    const int64_t ld = nb * c.L;
    product_tile(c.isa, c.dA_h + st.off * c.GH + 2 * c.H, c.GH, st.n, c.H, c.npan + pair * c.H * c.L, nb,
                 th.tile.data());
    const int64_t u0 = pair * c.L, u1 = std::min(c.H, (pair + nb) * c.L);
    step_backward_reset_gate<float>(c.s, st.p, c.bb, Block{st.n, u0, u1, c.H}, cview(th.tile.data() - u0, ld));
  });
}

// LSTMP: the carried dh over the P state units, and dout + dh into dH_total.
void carry_and_total(const BackwardCall& c, BackwardThread& th, const StepRows& st) {
  for_block_groups(th.sblk0, th.sblk1, kPair, [&](int64_t pair, int64_t nb) {
    if (st.p < c.T - 1) carry(c, th, st.p + 1, pair, nb);
    const int64_t q0 = pair * c.L, q1 = std::min(c.S, (pair + nb) * c.L);
    if (c.mask) {  // zoneout: the projected h_new's gradient is m*(dout + dh)
      zoneout_split(c, st, q0, q1, view(c.dH_total + st.off * c.S, c.S));
      return;
    }
    for (int64_t b = 0; b < st.n; ++b)
      for (int64_t q = q0; q < q1; ++q)
        c.dH_total[(st.off + b) * c.S + q] = c.dout[(st.off + b) * c.S + q] + c.dh[b * c.S + q];
  });
}

// LSTMP, once all of dout + dh is written: dm = (dout + dh) W_hr over the H
// units, then the pass on them.
void projected_pointwise(const BackwardCall& c, BackwardThread& th, const StepRows& st) {
  for_block_groups(th.blk0, th.blk1, kPair, [&](int64_t pair, int64_t nb) {
    const int64_t u0 = pair * c.L, u1 = std::min(c.H, (pair + nb) * c.L), ld = nb * c.L;
    product_tile(c.isa, c.dH_total + st.off * c.S, c.S, st.n, c.S, c.ppan + pair * c.S * c.L, nb, th.tile.data());
    copy_tile_rows(th.tile.data(), ld, st.n, u1 - u0, c.dm + u0, c.H);
    pointwise(c, st, pair, nb, cview(c.dm, c.H), cview(ptr<float>(c.zero_row), 0));
  });
}

PhaseList<BackwardCall, BackwardThread> backward_phases(const Cell& cell, bool project) {
  PhaseList<BackwardCall, BackwardThread> phases;
  if (project) {
    phases.add(carry_and_total);
    phases.add(projected_pointwise);
  } else {
    phases.add(carry_and_pointwise);
    if (cell.family == Family::gru && !cell.reset_after) phases.add(gru_reset_gate);
  }
  return phases;
}

}  // namespace

void fused_backward(const Cell& cell, const LayerWeights& w, const Steps& s, BackwardBuffers& bb) {
  BackwardCall c(cell, w, s, bb);
  c.phases = backward_phases(cell, c.project);
  const int nthreads = threads_for_step(s.batch * c.G * c.H * c.S, std::max(c.nblk, c.nblk_s));
  run_parallel(nthreads, [&](int tid, int nt, Barrier& barrier) {
    BackwardThread th(c, tid, nt);
    for (int64_t p = c.T - 1; p >= 0; --p) c.phases.run_step(c, th, step_rows(s, p), barrier);
    // the first step's carry: dh0, over the state units
    if (c.T > 0) {
      const int64_t c0 = c.project ? th.sblk0 : th.blk0, c1 = c.project ? th.sblk1 : th.blk1;
      for_block_groups(c0, c1, kPair, [&](int64_t pair, int64_t nb) { carry(c, th, 0, pair, nb); });
    }
  });
}

}  // namespace cpu
}  // namespace fusedrnn
