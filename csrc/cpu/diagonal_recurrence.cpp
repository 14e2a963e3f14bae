#include "diagonal_recurrence.h"

#include <algorithm>

#include "buffers.h"
#include "dense_product.h"
#include "parallel.h"
#include "pointwise_dispatch.h"
#include "rows.h"

namespace fusedrnn {
namespace cpu {

namespace {

// Threads split the units in multiples of the widest vector (16 floats), as the
// gemm strategy's passes do: a unit then meets the same vector code, lane and
// tail with any thread count, so the bits do not depend on it.
constexpr int64_t kUnitAlign = 16;

// out [N, H] holds the input projection on entry and h' on return; each row's
// previous state is the previous step's output row or its h0 row (rows.h).
// Zoneout (`mask` [N, H] defined): h' is blended with h_prev in place after the
// pass, and where a backward follows (`h_new` [N, H] defined) first copied there
// for its act'.
template <typename T>
void forward_steps(const Cell& cell, const Steps& s, const at::Tensor& h0, const at::Tensor& u,
                   const at::Tensor& out, const at::Tensor& mask, const at::Tensor& h_new) {
  const int64_t H = u.size(0);
  T* o = ptr<T>(out);
  const T* initial = ptr<T>(h0);
  const T* w = ptr<T>(u);
  const T* m = ptr<T>(mask);
  T* kept = ptr<T>(h_new);
  parallel_units(H, s.rows * H, kUnitAlign, [&](int64_t u0, int64_t u1) {
    for (int64_t p = 0; p < s.count(); ++p) {
      const int64_t t = s.order[p], off = s.offset[t];
      for_prev_segments<T>(s, p, Block{s.size[t], u0, u1, H}, o, 0, H, initial, H,
                           [&](const Block& sub, int64_t shift, View<const T> h_prev) {
        IndrnnForwardArgs<T> a;
        a.h = view(o + (off + shift) * H, H);
        a.h_prev = h_prev;
        a.u = w;
        pw_indrnn_forward(cell.relu, sub, a);
        if (!m) return;
        if (kept) {
          for (int64_t b = 0; b < sub.rows; ++b)
            std::copy(a.h.row(b) + u0, a.h.row(b) + u1, kept + (off + shift + b) * H + u0);
        }
        ZoneoutForwardArgs<T> z;
        z.mask = cview(m + (off + shift) * H, H);
        z.h_new = cview(a.h.p, H);
        z.h_prev = h_prev;
        z.h = a.h;
        pw_zoneout_forward(sub, z);
      });
    }
  });
}

// Steps in reverse processing order: dA of every row, dh (rows of the carried
// gradient, grad_hn on entry, dh0 on return) and du summed over all rows.
// Zoneout (`mask` defined; `h_new` the forward's unblended h'): the gradient d of
// each output row splits into m*d, which the pass takes (in place of dh, dout
// then a zero row), and (1-m)*d (`keep` [B, H]), added to dh_prev after it.
template <typename T>
void backward_steps(const Cell& cell, const Steps& s, const at::Tensor& dout, const at::Tensor& out,
                    const at::Tensor& h0, const at::Tensor& u, const at::Tensor& dA, const at::Tensor& dh,
                    const at::Tensor& du, const at::Tensor& mask, const at::Tensor& h_new) {
  const int64_t H = u.size(0);
  const T* g = ptr<T>(dout);
  const T* o = ptr<T>(out);
  const T* initial = ptr<T>(h0);
  const T* w = ptr<T>(u);
  T* da = ptr<T>(dA);
  T* dhp = ptr<T>(dh);
  T* dup = ptr<T>(du);
  const T* m = ptr<T>(mask);
  const at::Tensor keep = m ? at::empty({s.batch, H}, dh.options()) : at::Tensor();
  const at::Tensor zero_row = m ? at::zeros({H}, dh.options()) : at::Tensor();
  parallel_units(H, s.rows * H, kUnitAlign, [&](int64_t u0, int64_t u1) {
    for (int64_t p = s.count() - 1; p >= 0; --p) {
      const int64_t t = s.order[p], off = s.offset[t];
      for_prev_segments<T>(s, p, Block{s.size[t], u0, u1, H}, o, 0, H, initial, H,
                           [&](const Block& sub, int64_t shift, View<const T> h_prev) {
        IndrnnBackwardArgs<T> a;
        a.dout = cview(g + (off + shift) * H, H);
        a.dh = view(dhp + shift * H, H);
        a.h = cview(o + (off + shift) * H, H);
        a.h_prev = h_prev;
        a.u = w;
        a.du = dup;
        a.dA = view(da + (off + shift) * H, H);
        if (!m) {
          pw_indrnn_backward(cell.relu, sub, a);
          return;
        }
        const View<T> kept = view(ptr<T>(keep) + shift * H, H);
        ZoneoutBackwardArgs<T> z;
        z.mask = cview(m + (off + shift) * H, H);
        z.dh_a = a.dout;
        z.dh_b = cview(a.dh.p, H);
        z.cell = a.dh;
        z.keep = kept;
        pw_zoneout_backward(sub, z);
        a.dout = cview(ptr<T>(zero_row), 0);
        a.h = cview(ptr<T>(h_new) + (off + shift) * H, H);
        pw_indrnn_backward(cell.relu, sub, a);
        for (int64_t b = 0; b < sub.rows; ++b)
          for (int64_t i = u0; i < u1; ++i) a.dh.row(b)[i] += kept.row(b)[i];
      });
    }
  });
}

}  // namespace

ForwardOut diagonal_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0,
                                     const LayerWeights& w, const Steps& s, bool for_backward,
                                     const at::Tensor& zoneout_mask) {
  const int64_t H = w.w_hh.size(0);
  ForwardOut r;
  // b_hh is a plain bias here (no product to sit behind), so both fold into the projection,
  // whose buffer the recurrence then overwrites with h' row by row
  r.out = linear(x, w.w_ih, frame::folded_bias(cell, w, H)).contiguous();
  const at::Tensor h_init = h0.contiguous(), u = w.w_hh.contiguous();
  // none without zoneout: act' follows from out; with it, h' (Cell::zoneout_blocks)
  if (for_backward) r.workspace = at::empty({s.rows, zoneout_mask.defined() ? H : 0}, x.options());
  const at::Tensor h_new = zoneout_mask.defined() && for_backward ? r.workspace : at::Tensor();
  if (x.scalar_type() == at::kDouble) {
    forward_steps<double>(cell, s, h_init, u, r.out, zoneout_mask, h_new);
  } else {
    forward_steps<float>(cell, s, h_init, u, r.out, zoneout_mask, h_new);
  }
  r.h_n = s.rows == 0 ? h0.clone() : frame::final_rows(r.out, s);
  return r;
}

BackwardOut diagonal_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                       const at::Tensor& x, const at::Tensor& h0, const LayerWeights& w,
                                       const Steps& s, const at::Tensor& out, bool poison, bool need_dx,
                                       bool need_dweights, const at::Tensor& zoneout_mask,
                                       const at::Tensor& workspace) {
  const int64_t H = w.w_hh.size(0);
  const at::Tensor dA = empty_like_rows(x, {s.rows, H}, poison);
  const at::Tensor dh = grad_hn.clone();
  const at::Tensor du = at::zeros({H}, x.options());  // summed by the pass, one unit per thread
  const at::Tensor u = w.w_hh.contiguous();
  if (x.scalar_type() == at::kDouble) {
    backward_steps<double>(cell, s, grad_out, out, h0, u, dA, dh, du, zoneout_mask, workspace);
  } else {
    backward_steps<float>(cell, s, grad_out, out, h0, u, dA, dh, du, zoneout_mask, workspace);
  }
  BackwardOut r;
  r.dh0 = dh;
  if (need_dx) r.dx = linear(dA, w.w_ih.t(), at::Tensor());
  if (!need_dweights) return r;
  // the input side as frame::weight_gradients computes it for the other cells; the recurrent
  // weight's gradient is du, already summed
  r.dw.w_ih = fixed_mm(dA.t(), x);
  r.dw.w_hh = du;
  if (w.b_ih.defined()) r.dw.b_ih = dA.sum(0);
  if (w.b_hh.defined()) r.dw.b_hh = r.dw.b_ih.defined() ? r.dw.b_ih.clone() : dA.sum(0);
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
