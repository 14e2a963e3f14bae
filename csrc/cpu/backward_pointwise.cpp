// step_backward_reset_gate runs a pass of pointwise.h inline (not through the
// ISA dispatch): the same no-trapping-math as pointwise_dispatch.cpp, for the
// reason given there.
#pragma GCC optimize("no-trapping-math")

#include "backward_pointwise.h"

#include "pointwise_dispatch.h"
#include "rows.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
void step_backward_pointwise(const Cell& cell, const frame::Steps& s, int64_t p, BackwardBuffers& bb,
                             const Block& blk, View<const T> dh_a, View<const T> dh_b) {
  const int64_t H = bb.H, GH = bb.G * H, W = bb.W, off = s.offset[s.order[p]];
  const T* ws = ptr<T>(bb.ws) + off * W;
  if (cell.family == Family::lstm) {
    for_prev_segments<T>(s, p, blk, ptr<T>(bb.ws), 4 * H, W, ptr<T>(bb.c0), H,
                         [&](const Block& sub, int64_t shift, View<const T> c_prev) {
      LstmBackwardArgs<T> a;
      a.dm_a = shifted(dh_a, shift);
      a.dm_b = shifted(dh_b, shift);
      a.dc = shifted(view(ptr<T>(bb.dc_state), H), shift);
      a.ws = cview(ws + shift * W, W);
      a.c_prev = c_prev;
      a.peep = ptr<T>(bb.peep);
      a.dpeep = ptr<T>(bb.dpeep);
      a.dA = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
      pw_lstm_backward_for(bb.peephole, sub, a);
    });
  } else if (cell.family == Family::gru) {
    for_prev_segments<T>(s, p, blk, ptr<T>(bb.out), 0, bb.Hout, ptr<T>(bb.h0), bb.Hout,
                         [&](const Block& sub, int64_t shift, View<const T> h_prev) {
      GruBackwardArgs<T> a;
      a.dh_a = shifted(dh_a, shift);
      a.dh_b = shifted(dh_b, shift);
      a.ws = cview(ws + shift * W, W);
      a.h_prev = h_prev;
      a.dA_x = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
      a.dA_h = view(ptr<T>(bb.dA_h) + (off + shift) * GH, GH);
      a.dh_direct = shifted(view(ptr<T>(bb.dh_direct), H), shift);
      if (cell.reset_after) {
        pw_gru_backward_after(sub, a);
      } else {
        pw_gru_backward_zn(sub, a);
      }
    });
  } else {
    RnnBackwardArgs<T> a;
    a.dh_a = dh_a;
    a.dh_b = dh_b;
    // act' from h_new: the output row, or with zoneout (which blends the output) the workspace's last block
    a.h = bb.mask.defined() ? cview(ws + (W - H), W) : cview(ptr<T>(bb.out) + off * bb.Hout, bb.Hout);
    a.dA = view(ptr<T>(bb.dA_x) + off * GH, GH);
    pw_rnn_backward(cell.relu, blk, a);
  }
}

template <typename T>
void step_backward_reset_gate(const frame::Steps& s, int64_t p, BackwardBuffers& bb, const Block& blk,
                              View<const T> dk_rows) {
  const int64_t H = bb.H, GH = bb.G * H, off = s.offset[s.order[p]];
  const T* ws = ptr<T>(bb.ws) + off * bb.W;
  for_prev_segments<T>(s, p, blk, ptr<T>(bb.out), 0, bb.Hout, ptr<T>(bb.h0), bb.Hout,
                       [&](const Block& sub, int64_t shift, View<const T> h_prev) {
    GruBackwardArgs<T> a;
    a.ws = cview(ws + shift * bb.W, bb.W);
    a.h_prev = h_prev;
    a.dA_x = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
    a.dh_direct = shifted(view(ptr<T>(bb.dh_direct), H), shift);
    gru_backward_reset_before_r<T>(sub, a, shifted(dk_rows, shift));
  });
}

// float: both strategies; double: the gemm strategy
template void step_backward_pointwise<float>(const Cell&, const frame::Steps&, int64_t, BackwardBuffers&,
                                             const Block&, View<const float>, View<const float>);
template void step_backward_pointwise<double>(const Cell&, const frame::Steps&, int64_t, BackwardBuffers&,
                                              const Block&, View<const double>, View<const double>);
template void step_backward_reset_gate<float>(const frame::Steps&, int64_t, BackwardBuffers&, const Block&,
                                              View<const float>);
template void step_backward_reset_gate<double>(const frame::Steps&, int64_t, BackwardBuffers&, const Block&,
                                               View<const double>);

}  // namespace cpu
}  // namespace fusedrnn
