#include "gemm_strategy.h"

#include <algorithm>

#include "backward_pointwise.h"
#include "dense_product.h"
#include "parallel.h"
#include "pointwise_dispatch.h"

namespace fusedrnn {
namespace cpu {

namespace {

using frame::LayerWeights;
using frame::Steps;

// The pointwise passes read the hidden-side product relative to their block's
// first unit (the fused kernels' tile holds only that block); a [rows, G*H]
// GEMM result holds every unit, so a block starting at u0 gets it shifted.
template <typename Args>
Args with_product_at_unit(Args a, int64_t u0) {
  a.hp.p += u0;
  return a;
}

template <typename T>
void forward_steps(const Cell& cell, const LayerWeights& w, const Steps& s, ForwardBuffers& f, bool poison) {
  const int64_t H = f.H, Hout = f.Hout, G = f.G, GH = G * H, W = f.W, B = s.batch;
  const bool reset_before = cell.family == Family::gru && !cell.reset_after;
  at::Tensor hp = empty_like_rows(f.xp, {B, reset_before ? 2 * H : GH}, poison);
  at::Tensor hp_n = reset_before ? empty_like_rows(f.xp, {B, H}, poison) : at::Tensor();
  at::Tensor mbuf = w.w_proj.defined() ? empty_like_rows(f.xp, {B, H}, poison) : at::Tensor();
  at::Tensor w_rec = reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh;
  const T* xp = ptr<T>(f.xp);
  T* out = ptr<T>(f.out);
  T* ws = ptr<T>(f.ws);
  const T* hs = ptr<T>(f.h_state);
  const bool zoneout = f.mask.defined();
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    at::Tensor h_prev = f.h_state.narrow(0, 0, n);
    at::Tensor hp_rows = hp.narrow(0, 0, n);
    fixed_mm_out(hp_rows, h_prev, w_rec.t());
    const T* hpp = ptr<T>(hp);
    if (cell.family == Family::lstm) {
      LstmForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.hp = cview(hpp, GH);
      a.hp_gs = H;
      a.c = view(ptr<T>(f.c_state), H);
      a.peep = ptr<T>(f.peep);
      a.ws = view(ws + f.ws_row(off) * W, W);
      a.m = mbuf.defined() ? view(ptr<T>(mbuf), H) : view(out + off * Hout, Hout);
      parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
        pw_lstm_forward_for(f.keep_workspace, w.w_peep.defined(), Block{n, u0, u1, H}, with_product_at_unit(a, u0));
      });
      if (mbuf.defined()) {
        at::Tensor out_rows = f.out.narrow(0, off, n);
        fixed_mm_out(out_rows, mbuf.narrow(0, 0, n), w.w_proj.t());
      }
    } else if (cell.family == Family::gru) {
      GruForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.b_hn = ptr<T>(f.b_hn);
      a.h_prev = cview(hs, Hout);
      a.ws = view(ws + f.ws_row(off) * W, W);
      a.h = view(out + off * Hout, Hout);
      if (cell.reset_after) {
        a.hp = cview(hpp, GH);
        a.hp_gs = H;
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_after_for(f.keep_workspace, Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
      } else {
        a.hp = cview(hpp, 2 * H);
        a.hp_gs = H;
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_gates(Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
        at::Tensor hp_n_rows = hp_n.narrow(0, 0, n);
        fixed_mm_out(hp_n_rows, f.ws.narrow(0, f.ws_row(off), n).narrow(1, 3 * H, H),
                     w.w_hh.narrow(0, 2 * H, H).t());
        a.hp = cview(ptr<T>(hp_n), H);
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_state(Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
      }
    } else {
      RnnForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.hp = cview(hpp, GH);
      // with zoneout, h_new goes to the workspace's last block (the backward's act' reads it there)
      a.h = zoneout ? view(ws + f.ws_row(off) * W + (W - H), W) : view(out + off * Hout, Hout);
      parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
        pw_rnn_forward(cell.relu, Block{n, u0, u1, H}, with_product_at_unit(a, u0));
      });
    }
    if (zoneout) {  // the output rows (h_new, or the RNN's workspace block) blended with h_prev
      ZoneoutForwardArgs<T> z;
      z.mask = cview(ptr<T>(f.mask) + off * Hout, Hout);
      z.h_new = cell.family == Family::rnn ? cview(ws + f.ws_row(off) * W + (W - H), W)
                                           : cview(out + off * Hout, Hout);
      z.h_prev = cview(hs, Hout);
      z.h = view(out + off * Hout, Hout);
      parallel_units(Hout, n * Hout, 16,
                     [&](int64_t u0, int64_t u1) { pw_zoneout_forward(Block{n, u0, u1, Hout}, z); });
    }
    h_prev.copy_(f.out.narrow(0, off, n));  // after the pass, which may read h_prev
  }
}

template <typename T>
void backward_steps(const Cell& cell, const LayerWeights& w, const Steps& s, BackwardBuffers& bb, bool poison) {
  const int64_t H = bb.H, Hout = bb.Hout, G = bb.G, GH = G * H, B = s.batch;
  const bool proj = w.w_proj.defined();
  at::Tensor dm = proj ? empty_like_rows(bb.ws, {B, H}, poison) : at::Tensor();
  at::Tensor zeros_bh = proj ? at::zeros({B, H}, bb.ws.options()) : at::Tensor();
  at::Tensor dk = (cell.family == Family::gru && !cell.reset_after) ? empty_like_rows(bb.ws, {B, H}, poison) : at::Tensor();
  const T* dout = ptr<T>(bb.dout);
  const bool zoneout = bb.mask.defined();
  // zoneout: the pass's second gradient term once the first holds all of it (stride 0: one row)
  at::Tensor zero_row = zoneout ? at::zeros({Hout}, bb.ws.options()) : at::Tensor();
  for (int64_t p = s.count() - 1; p >= 0; --p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    at::Tensor dh_rows = bb.dh_state.narrow(0, 0, n);
    View<const T> dh_a = cview(dout + off * Hout, Hout), dh_b = cview(ptr<T>(bb.dh_state), Hout);
    if (zoneout) {  // dh = m*(dout + dh) for the cell (in place), dh_keep = (1-m)*(dout + dh) for dh_prev
      ZoneoutBackwardArgs<T> z;
      z.mask = cview(ptr<T>(bb.mask) + off * Hout, Hout);
      z.dh_a = dh_a;
      z.dh_b = dh_b;
      z.cell = view(ptr<T>(bb.dh_state), Hout);
      z.keep = view(ptr<T>(bb.dh_keep), Hout);
      parallel_units(Hout, n * Hout, 16,
                     [&](int64_t u0, int64_t u1) { pw_zoneout_backward(Block{n, u0, u1, Hout}, z); });
      dh_a = cview(ptr<T>(zero_row), 0);
    }
    if (proj) {  // dm = (dout + dh) W_proj
      at::Tensor total = bb.dH_total.narrow(0, off, n);
      if (zoneout) {
        total.copy_(dh_rows);  // m*(dout + dh) already
      } else {
        at::add_out(total, bb.dout.narrow(0, off, n), dh_rows);
      }
      at::Tensor dm_rows = dm.narrow(0, 0, n);
      fixed_mm_out(dm_rows, total, w.w_proj);
      dh_a = cview(ptr<T>(dm), H);
      dh_b = cview(ptr<T>(zeros_bh), H);
    }
    auto pointwise = [&](int64_t u0, int64_t u1) {
      step_backward_pointwise<T>(cell, s, p, bb, Block{n, u0, u1, H}, dh_a, dh_b);
    };
    parallel_units(H, n * GH, 16, pointwise);
    at::Tensor dA_x_rows = bb.dA_x.narrow(0, off, n);
    if (cell.family == Family::gru) {
      at::Tensor direct = bb.dh_direct.narrow(0, 0, n);
      if (cell.reset_after) {
        fixed_mm_out(dh_rows, bb.dA_h.narrow(0, off, n), w.w_hh, direct);
      } else {
        // dk = da_n W_hn, then the r-gate gradient and dh += dk*r, then the r,z product
        at::Tensor dk_rows = dk.narrow(0, 0, n);
        fixed_mm_out(dk_rows, dA_x_rows.narrow(1, 2 * H, H), w.w_hh.narrow(0, 2 * H, H));
        parallel_units(H, n * H, 16, [&](int64_t u0, int64_t u1) {
          step_backward_reset_gate<T>(s, p, bb, Block{n, u0, u1, H}, cview(ptr<T>(dk), H));
        });
        fixed_mm_out(dh_rows, dA_x_rows.narrow(1, 0, 2 * H), w.w_hh.narrow(0, 0, 2 * H), direct);
      }
    } else {
      fixed_mm_out(dh_rows, dA_x_rows, w.w_hh);
    }
    if (zoneout) dh_rows.add_(bb.dh_keep.narrow(0, 0, n));  // after the product, as the fused carry adds it
  }
}

}  // namespace

void gemm_forward(const Cell& cell, const LayerWeights& w, const Steps& s, ForwardBuffers& f, bool poison) {
  if (f.out.scalar_type() == at::kDouble) {
    forward_steps<double>(cell, w, s, f, poison);
  } else {
    forward_steps<float>(cell, w, s, f, poison);
  }
}

void gemm_backward(const Cell& cell, const LayerWeights& w, const Steps& s, BackwardBuffers& bb, bool poison) {
  if (bb.dA_x.scalar_type() == at::kDouble) {
    backward_steps<double>(cell, w, s, bb, poison);
  } else {
    backward_steps<float>(cell, w, s, bb, poison);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
