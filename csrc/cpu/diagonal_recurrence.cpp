#include "diagonal_recurrence.h"

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
template <typename T>
void forward_steps(const Cell& cell, const Steps& s, const at::Tensor& h0, const at::Tensor& u,
                   const at::Tensor& out) {
  const int64_t H = u.size(0);
  T* o = ptr<T>(out);
  const T* initial = ptr<T>(h0);
  const T* w = ptr<T>(u);
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
      });
    }
  });
}

// Steps in reverse processing order: dA of every row, dh (rows of the carried
// gradient, grad_hn on entry, dh0 on return) and du summed over all rows.
template <typename T>
void backward_steps(const Cell& cell, const Steps& s, const at::Tensor& dout, const at::Tensor& out,
                    const at::Tensor& h0, const at::Tensor& u, const at::Tensor& dA, const at::Tensor& dh,
                    const at::Tensor& du) {
  const int64_t H = u.size(0);
  const T* g = ptr<T>(dout);
  const T* o = ptr<T>(out);
  const T* initial = ptr<T>(h0);
  const T* w = ptr<T>(u);
  T* da = ptr<T>(dA);
  T* dhp = ptr<T>(dh);
  T* dup = ptr<T>(du);
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
        pw_indrnn_backward(cell.relu, sub, a);
      });
    }
  });
}

}  // namespace

ForwardOut diagonal_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0,
                                     const LayerWeights& w, const Steps& s, bool for_backward) {
  const int64_t H = w.w_hh.size(0);
  ForwardOut r;
  // b_hh is a plain bias here (no product to sit behind), so both fold into the projection,
  // whose buffer the recurrence then overwrites with h' row by row
  r.out = linear(x, w.w_ih, frame::folded_bias(cell, w, H)).contiguous();
  const at::Tensor h_init = h0.contiguous(), u = w.w_hh.contiguous();
  if (x.scalar_type() == at::kDouble) {
    forward_steps<double>(cell, s, h_init, u, r.out);
  } else {
    forward_steps<float>(cell, s, h_init, u, r.out);
  }
  r.h_n = s.rows == 0 ? h0.clone() : frame::final_rows(r.out, s);
  if (for_backward) r.workspace = at::empty({s.rows, 0}, x.options());  // none: act' follows from out
  return r;
}

BackwardOut diagonal_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                       const at::Tensor& x, const at::Tensor& h0, const LayerWeights& w,
                                       const Steps& s, const at::Tensor& out, bool poison, bool need_dx,
                                       bool need_dweights) {
  const int64_t H = w.w_hh.size(0);
  const at::Tensor dA = empty_like_rows(x, {s.rows, H}, poison);
  const at::Tensor dh = grad_hn.clone();
  const at::Tensor du = at::zeros({H}, x.options());  // summed by the pass, one unit per thread
  const at::Tensor u = w.w_hh.contiguous();
  if (x.scalar_type() == at::kDouble) {
    backward_steps<double>(cell, s, grad_out, out, h0, u, dA, dh, du);
  } else {
    backward_steps<float>(cell, s, grad_out, out, h0, u, dA, dh, du);
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
